// A URL password may hold any character when it was not percent-encoded (a URL pasted into a
// config file or an environment variable): quotes, angle brackets, backticks and blanks end a
// URL-like run of text, yet none of the password may reach a log line or the CLI's output.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { redactSecrets } from '../../src/observability/redact.js'

const masked = 'postgres://app:***@db/app'

// Whether `postgres://app:${password}@db` cannot be told from a host and port followed by
// prose or JSON (`http://localhost:8080 is down, mail ops@example.com`, `"http://h:8080" by
// a@b`, `{"u":"http://h:80","by":"a@b"}`): the password starts with what reads as a port
// (digits, then maybe a path), and a blank ends it, or it holds a blank or a second quote.
function readsAsPort(password: string): boolean {
  const port = /^\d*(?:[/?#][^\s"'<>`]*)?(?=[\s"'<>`])/.exec(password)?.[0]
  if (port === undefined) return false
  if (/\s/.test(password[port.length] as string)) return true
  return port !== '' && /[\s"'<>`]/.test(password.slice(port.length + 1))
}

describe('redactSecrets on URL passwords with characters that end a URL run', () => {
  it('masks a password holding a quote, an angle bracket or a backtick', () => {
    for (const password of ['pa"ss', "pa'ss", 'pa<ss', 'pa>ss', 'pa`ss', '"', 'ab"', 'a b"c']) {
      const url = `postgres://app:${password}@db/app`
      expect(redactSecrets(url), url).toBe(masked)
      expect(redactSecrets(`cannot connect to ${url}: timeout`), url).toBe(
        `cannot connect to ${masked}: timeout`,
      )
      expect(redactSecrets(`url "${url}" refused`), url).toBe(`url "${masked}" refused`)
    }
  })

  it('masks a password holding a blank other than a space or a tab', () => {
    for (const password of ['p\u00a0ss', 'p\u2028ss', 'p\u3000ss', 'p\vss']) {
      const url = `postgres://app:${password}@db/app`
      expect(redactSecrets(url), JSON.stringify(url)).toBe(masked)
    }
  })

  it('masks a password that starts like a port, then holds a quote', () => {
    for (const password of ['12"34', '12<34', '1/2"3', '80`x']) {
      const url = `postgres://app:${password}@db/app`
      expect(redactSecrets(url), url).toBe(masked)
    }
    // A quoted host and port is no password.
    for (const text of [
      '"http://host:8080" and "http://h:1/x"',
      '<http://host:80/a>',
      '"http://host:8080" by ann@example.com',
      '{"url":"http://host:8080","by":"ann@example.com"}',
    ])
      expect(redactSecrets(text), text).toBe(text)
  })

  it('masks a quote-holding password in an InvalidOptionError message, even cut short', () => {
    // describeValue quotes the value as JSON: the quote arrives as `\"`.
    const short = new InvalidOptionError('url', 'a URL', 'postgres://app:pa"ss@db/app').message
    expect(redactSecrets(short)).toBe(`url: expected a URL, got "${masked}"`)
    const long = `redis://default:p"${'4ss'.repeat(30)}@cache:6379`
    const cut = new InvalidOptionError('url', 'a URL', long).message
    expect(redactSecrets(cut)).not.toContain('4ss')
    expect(redactSecrets(cut)).toContain('redis://default:***…')
  })

  it('masks percent-encoded passwords and a colon inside the password', () => {
    for (const password of ['pa%22ss', 'p%40ss', 'p%3Ass', 'p:ss', 'a:b:c', '%20%22%27%3C%3E']) {
      const url = `postgres://app:${password}@db/app`
      expect(redactSecrets(url), url).toBe(masked)
    }
  })

  it('masks any password without an @, a line break or a ://, wherever the URL stands', () => {
    const char = fc.oneof(
      fc.constantFrom(' ', '\t', '"', "'", '<', '>', '`', '\\', ':', '/', '?', '#', '%', '…'),
      fc.constantFrom('\u00a0', '\u2028', '\u3000'),
      fc.string({ minLength: 1, maxLength: 1 }).filter((c) => !/[@\r\n]/.test(c)),
    )
    const password = fc
      .array(char, { minLength: 1, maxLength: 12 })
      .map((cs) => cs.join(''))
      .filter((p) => !readsAsPort(p))
      // A `://` ends the search for the `@` (redactSecrets' TSDoc): no valid URL's password
      // holds one unencoded. Generated once in a few runs, it made this property flaky.
      .filter((p) => !p.includes('://'))
    fc.assert(
      fc.property(password, (pw) => {
        const url = `postgres://app:${pw}@db/app`
        for (const [text, expected] of [
          [url, masked],
          [`connect ${url} failed`, `connect ${masked} failed`],
          [`"${url}"`, `"${masked}"`],
        ])
          expect(redactSecrets(text as string), JSON.stringify(text)).toBe(expected)
      }),
      { numRuns: 500 },
    )
  })
})
