// pg-connection-string reads a postgres:// URL's query through URLSearchParams, which
// percent-decodes the keys (and the URL parser drops raw tabs and line breaks first), so
// `?pass%77ord=x` sets the password as `?password=x` does. The redaction looked for the literal
// `password=`, so such a password was shown whole in "cannot open <url>" and in the message that
// refuses a URL (`sslpass%77ord=`, a parameter pg does not read).
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { parseDatabaseUrl } from '../../src/stores/open.js'
import { redactUrl } from '../../src/stores/redact.js'

// What pg-connection-string reads the password (or the key's passphrase) from.
const readPassword = (url: string): string | null => {
  const query = new URL(url).searchParams
  return query.get('password') ?? query.get('sslpassword')
}

describe('redactUrl with a password under an encoded query key', () => {
  it.each([
    ['postgres://app@db/app?pass%77ord=HUNTER2', 'postgres://app@db/app?pass%77ord=***'],
    [
      'postgres://app@db/app?%70%61%73%73%77%6F%72%64=HUNTER2',
      'postgres://app@db/app?%70%61%73%73%77%6F%72%64=***',
    ],
    ['postgres://app@db/app?PASS%57ORD=HUNTER2', 'postgres://app@db/app?PASS%57ORD=***'],
    [
      'postgres://db/app?user=a&pass%77ord=HUNTER2&x=1',
      'postgres://db/app?user=a&pass%77ord=***&x=1',
    ],
    ['postgres://app@db/app?sslpass%77ord=HUNTER2', 'postgres://app@db/app?sslpass%77ord=***'],
    ['postgres://app@db/app?pass\tword=HUNTER2', 'postgres://app@db/app?pass\tword=***'],
    ['postgres://app@db/app?pass\nword=HUNTER2', 'postgres://app@db/app?pass\nword=***'],
  ])('%j', (url, expected) => {
    if (!url.includes('PASS')) expect(readPassword(url)).toBe('HUNTER2')
    expect(redactUrl(url)).toBe(expected)
  })

  it('leaves keys that do not decode to a password name as they are', () => {
    for (const url of [
      'postgres://app@db/app?application_name=pass%77ord',
      'postgres://app@db/app?passwords=x',
    ]) {
      expect(readPassword(url)).toBeNull()
      expect(redactUrl(url)).toBe(url)
    }
  })

  it('hides the value of a password key encoded twice, which pg does not read as one', () => {
    const url = 'postgres://app@db/app?pass%2577ord=HUNTER2'
    expect(readPassword(url)).toBeNull()
    expect(redactUrl(url)).toBe('postgres://app@db/app?pass%2577ord=***')
  })

  it('does not repeat an sslpassword under an encoded key when refusing the URL', () => {
    let error: unknown
    try {
      parseDatabaseUrl('postgres://app@127.0.0.1:1/app?sslpass%77ord=HUNTER2')
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).message).toContain('"sslpassword"')
    expect((error as InvalidOptionError).message).not.toContain('HUNTER2')
  })
})
