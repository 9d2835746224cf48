// A URL built from a password read from a file (`postgres://app:${readFileSync(path)}@db`, a
// Docker or Kubernetes secret) holds the file's trailing line break right before its `@`. In a
// longer, multi-line message (a driver's error, a stack, util.inspect output) that password
// was left unmasked: the search for the `@` that ends a password stopped at the line break.
import { describe, expect, it } from 'vitest'
import { oneLine } from '../../src/cli/usage.js'
import { createJsonLogger } from '../../src/observability/index.js'
import { redactSecrets } from '../../src/observability/redact.js'

const secret = 's3cr3t-pw'

describe('redactSecrets on a URL whose password ends in a line break', () => {
  const breaks = ['\n', '\r\n', '\r']

  it('masks it wherever the URL stands in a multi-line message', () => {
    for (const br of breaks) {
      const shapes: [string, string][] = [
        [`postgres://app:${secret}${br}@db:5432/app`, `postgres://app:***@db:5432/app`],
        // pg, with the connection string in the message, then a stack.
        [
          `Error: connect ECONNREFUSED 10.0.0.5:5432 (postgres://app:${secret}${br}@db:5432/app)\n    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1607:16)`,
          'Error: connect ECONNREFUSED 10.0.0.5:5432 (postgres://app:***@db:5432/app)\n    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1607:16)',
        ],
        // amqplib, the URL on a line of its own in util.inspect output.
        [
          `Error: Handshake terminated by server: 403 (ACCESS-REFUSED)\n  url: amqp://guest:${secret}${br}@rabbit:5672/%2F,\n  code: 403`,
          'Error: Handshake terminated by server: 403 (ACCESS-REFUSED)\n  url: amqp://guest:***@rabbit:5672/%2F,\n  code: 403',
        ],
        // ioredis, a password-only userinfo, with blanks in the password too.
        [
          `[ioredis] Unhandled error event: ReplyError: WRONGPASS\n  at redis://:pa ss ${secret}${br}@cache:6379/0\n  next line`,
          '[ioredis] Unhandled error event: ReplyError: WRONGPASS\n  at redis://:***@cache:6379/0\n  next line',
        ],
        // A password that starts like a port, and a token alone (NATS, Redis).
        [
          `cannot open redis://default:1234${br}@cache:6379 now`,
          'cannot open redis://default:***@cache:6379 now',
        ],
        [
          `nats://${secret}${br}@nats:4222 refused\nretrying`,
          'nats://***@nats:4222 refused\nretrying',
        ],
      ]
      for (const [text, expected] of shapes) {
        const masked = redactSecrets(text)
        expect(masked, JSON.stringify(text)).toBe(expected)
        expect(masked).not.toContain(secret)
      }
    }
  })

  it('reaches a log line and a CLI line with the password masked', () => {
    const text = `cannot open postgres://app:${secret}\n@db/app: timeout`
    expect(oneLine(text)).toBe('cannot open postgres://app:***@db/app: timeout')
    let line = ''
    const output = {
      write(t: string) {
        line += t
      },
    }
    createJsonLogger({ output }).error('failed', { error: new Error(text) })
    expect(line).not.toContain(secret)
    expect(line).toContain('postgres://app:***@db/app')
  })

  it('leaves a line break that no @ follows as the end of the URL', () => {
    for (const text of [
      'see http://host:8080/\n@here is a handle',
      'see http://host:8080 \n@here is a handle',
      'first postgres://app:pw\nthen mail ann@example.com',
      'see https://example.com/a/b\n@mention',
      'url http://h:80\n\n@x',
    ]) {
      const masked = redactSecrets(text)
      // The next line is the message's own, not a password's.
      expect(masked.split('\n').slice(1), JSON.stringify(text)).toEqual(text.split('\n').slice(1))
    }
    // A bare host and port then a line that starts with `@` cannot be told from a password of
    // digits read from a file: hiding too much is the safe side.
    expect(redactSecrets('see http://host:8080\n@here')).toBe('see http://host:***@here')
  })
})
