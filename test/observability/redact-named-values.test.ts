// Secrets written as `name: value`: header lines quoted in an error or a log line, and objects
// printed by util.inspect or a template string. The name is judged as a field name is
// (isSecretKey); the value is masked, the name and the text around it kept.
import { inspect } from 'node:util'
import { describe, expect, it } from 'vitest'
import { maskNamedValues, redactSecrets } from '../../src/observability/redact.js'

describe('redactSecrets on header lines', () => {
  it('masks the value of a secret-named header, keeping its name', () => {
    for (const [text, masked] of [
      ['x-api-key: abc', 'x-api-key: ***'],
      ['X-Api-Key: abc123\nhost: x', 'X-Api-Key: ***\nhost: x'],
      ['cookie: a=b; c=d', 'cookie: ***'],
      [
        'set-cookie: sid=abc; Path=/; HttpOnly\ncontent-type: text/plain',
        'set-cookie: ***\ncontent-type: text/plain',
      ],
      ['proxy-authorization: xyz', 'proxy-authorization: ***'],
      // A credential without a scheme is masked whole; with one, the scheme is kept.
      ['Authorization: abc', 'Authorization: ***'],
      ['authorization: Basic dXNlcjpwYXNz', 'authorization: Basic ***'],
      ['Authorization: Bearer abcdefgh\nAccept: */*', 'Authorization: Bearer ***\nAccept: */*'],
      ['password: x', 'password: ***'],
      ['login failed for ann, password: hunter 2', 'login failed for ann, password: ***'],
      // The next header on the same line is kept.
      ['headers: x-api-key: k1 accept: */*', 'headers: x-api-key: *** accept: */*'],
      ['request failed (x-api-key: k1)', 'request failed (x-api-key: ***)'],
      ['GET /x HTTP/1.1\r\n  Cookie: sid=1\r\n', 'GET /x HTTP/1.1\r\n  Cookie: ***\r\n'],
      ['Session-Id:77', 'Session-Id:***'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('knows every name isSecretKey knows, in any spelling', () => {
    // redactSecrets skips text without a secret's word: none of these may be skipped.
    for (const name of [
      'password',
      'Passwd',
      'passphrase',
      'X-Client-Secret',
      'access_token',
      'API-KEY',
      'private.key',
      'credential',
      'credentials',
      'authorization',
      'Cookie',
      'session-id',
      'PGPASSWORD',
    ])
      expect(redactSecrets(`${name}: v4lue`), name).toBe(`${name}: ***`)
  })

  it('leaves ordinary text with colons alone', () => {
    for (const text of [
      'connection refused: timeout after 5 s',
      'key: orders-1 not found',
      'token bucket empty',
      'tokens: 5 left',
      'max_tokens: 10',
      'passwordPolicy: strict',
      'secretFile: /etc/app/secret',
      'error: timeout: 5 s',
      'password:\nnext line',
      'password: ',
      '    at Object.<anonymous> (/app/src/token.ts:12:5)',
      // Option checks name the option, then the problem (InvalidOptionError, the proxy's
      // config errors), and a file path may end in a secret's name: none of these is a value.
      'admin.token: expected { env: NAME } or { file: path }, got a mapping',
      'secret: expected at least one secret, got []',
      'services.a.auth.bearer.file: /etc/app/token: no such file',
      'C:\\app\\token: access denied',
      // A secret's name that follows a word is prose, not a field.
      'a webhook --broker needs a signing secret: set BREAKWATER_WEBHOOK_SECRET',
      'refreshing the access token: 3 tries left',
    ])
      expect(redactSecrets(text), text).toBe(text)
  })
})

describe('redactSecrets on object text', () => {
  it('masks the values of secret-named members, keeping names and punctuation', () => {
    for (const [text, masked] of [
      ["{ password: 'x' }", "{ password: '***' }"],
      ["{ user: 'ann', apiKey: 'k', retries: 3 }", "{ user: 'ann', apiKey: '***', retries: 3 }"],
      ['{ token: abc, n: 1 }', '{ token: ***, n: 1 }'],
      ['{ token: abc }', '{ token: *** }'],
      ["{ 'x-api-key': 'abc' }", "{ 'x-api-key': '***' }"],
      ['{"password":"x"}', '{"password":"***"}'],
      ['{"password": \'x\'}', '{"password": \'***\'}'],
      [
        "bad options { dbPassword: 'p w', host: 'db' }",
        "bad options { dbPassword: '***', host: 'db' }",
      ],
      // A secret held in another member's quoted value is masked too.
      ['message: "login failed, password: x"', 'message: "login failed, password: ***"'],
      // JSON quoted inside a JSON string.
      ['{\\"password\\":\\"x\\"}', '{\\"password\\":\\"***\\"}'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('masks what util.inspect prints of an options object', () => {
    const text = inspect({
      url: 'db',
      password: 'pw-one',
      nested: { clientSecret: 'pw-two', list: [{ token: 'pw-three' }] },
      'x-api-key': 'pw-four',
    })
    const masked = redactSecrets(text)
    for (const secret of ['pw-one', 'pw-two', 'pw-three', 'pw-four'])
      expect(masked, masked).not.toContain(secret)
    expect(masked).toContain("url: 'db'")
  })
})

describe('redactSecrets on name = value with blanks (INI, TOML, .env dumps)', () => {
  it('masks the value as after a colon', () => {
    for (const [text, masked] of [
      ['password = hunter2', 'password = ***'],
      ['[db]\npassword = "s3cret"\nhost = "db"', '[db]\npassword = "***"\nhost = "db"'],
      ['DB_PASSWORD =abc', 'DB_PASSWORD =***'],
      ["{ api_key => 'k', user => 'ann' }", "{ api_key => '***', user => 'ann' }"],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('leaves comparisons and prose alone', () => {
    for (const text of ['token == expected', 'if the token = null, retry', 'a == b'])
      expect(redactSecrets(text), text).toBe(text)
  })
})

describe('named-value redaction work', () => {
  function scanned(text: string): number {
    let chars = 0
    maskNamedValues(text, (n) => {
      chars += n
    })
    return chars
  }

  it('reads each character a bounded number of times looking for the end of a value', () => {
    // A value is read once, the word after each blank in it once more (to see whether it
    // starts the next `name: `), and closing punctuation at its end once more.
    for (const text of [
      'password: a '.repeat(50_000),
      `password: ${'a '.repeat(100_000)}`,
      `token: "${'a'.repeat(100_000)}`,
      `token: ${'a.'.repeat(100_000)} b`,
      `cookie: x${' '.repeat(200_000)}y`,
      'token: token: token: '.repeat(20_000),
    ])
      expect(scanned(text), text.slice(0, 30)).toBeLessThanOrEqual(3 * text.length)
  })

  it('masks after long names and long blank runs (each is read a bounded number of times)', () => {
    // A retry from every character of a long name, or of a blank run, would take minutes.
    const name = 'a.'.repeat(200_000)
    expect(redactSecrets(`${name}token: x`)).toBe(`${name}token: ***`)
    expect(redactSecrets(`${name} x`)).toBe(`${name} x`)
    const blanks = ' '.repeat(200_000)
    expect(redactSecrets(`password${blanks}x`)).toBe(`password${blanks}x`)
    expect(redactSecrets(`password:${blanks}x`)).toBe(`password:${blanks}***`)
    expect(redactSecrets(`password:${blanks}`)).toBe(`password:${blanks}`)
    expect(redactSecrets(`{${blanks}token: x }`)).toBe(`{${blanks}token: *** }`)
    expect(redactSecrets(`a${blanks}token: x`)).toBe(`a${blanks}token: x`)
    expect(redactSecrets(`'${'"'.repeat(200_000)}`)).toBe(`'${'"'.repeat(200_000)}`)
  })
})
