// A URL written without `//` (nats:user:pw@host, redis:/:pw@host) parses with no host and its
// credentials in the path; the broker and database refusals hide them (hideBeforeAt), but the
// text redaction of log lines and CLI output looked only for scheme:// and wrote the password.
import { describe, expect, it } from 'vitest'
import { createJsonLogger, redactSecrets } from '../../src/observability/index.js'

describe('redactSecrets on a URL with userinfo and no //', () => {
  it('masks everything between the scheme and the @, as the broker refusals do', () => {
    for (const [text, shown] of [
      ['nats:user:hunter2@host:4222', 'nats:***@host:4222'],
      [
        'cannot connect to nats:user:hunter2@host:4222: timeout',
        'cannot connect to nats:***@host:4222: timeout',
      ],
      ['redis:/:hunter2@cache:6379/0', 'redis:/***@cache:6379/0'],
      ['amqp:guest:hunt@r2@rabbit/vh', 'amqp:***@rabbit/vh'],
      ['url=postgres:app:hunter2@db/app', 'url=postgres:***@db/app'],
      ['(nats:hunter2@host)', '(nats:***@host)'],
      ['{"url":"tls:app:hunter2@nats:4222"}', '{"url":"tls:***@nats:4222"}'],
      ['nats:user:hunter2@host?x=a@b', 'nats:***@host?x=a@b'],
    ]) {
      expect(redactSecrets(text!), text).toBe(shown)
    }
  })

  it('leaves alone what is no URL userinfo: mail addresses, paths, package versions, //-URLs', () => {
    for (const text of [
      'mail ann@example.com',
      'reply to: ann@example.com',
      'mailto:ann@example.com',
      'https://host/users/@me',
      'file:/home/app/node_modules/pkg@1.2.3/index.js',
      'node_modules/.pnpm/pkg@1.2.3/node_modules',
      'at f (C:\\app\\node_modules\\.pnpm\\pkg@1.2.3\\index.js:1:2)',
      'at f (/app/node_modules/.pnpm/pkg@1.2.3/node_modules/pkg/index.js:10:5)',
      'http://localhost:8080 is down, mail ops@example.com',
      'at 12:30@home',
      'nats:@host',
    ]) {
      expect(redactSecrets(text), text).toBe(text)
    }
  })

  it('keeps such a password out of a log line', () => {
    let raw = ''
    const output = {
      write(text: string) {
        raw += text
      },
    }
    const log = createJsonLogger({ output })
    const url = 'nats:relay:hunter2@nats.internal:4222'
    log.error(`cannot connect to ${url}`, { url, error: new Error(`connect ${url} refused`) })
    expect(raw).not.toContain('hunter2')
    expect(raw).toContain('nats:***@nats.internal:4222')
  })
})
