// Secrets that hold a space: a value is not over at the first blank. Each case is a line as it
// reaches a log or an error message; none of the secret's words may survive.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { maskUrlCredentials, redactSecrets } from '../../src/observability/redact.js'

describe('redactSecrets on secrets that hold a space', () => {
  it('masks key=value pairs up to the next pair, the end of the line or a separator', () => {
    for (const [text, masked] of [
      ['login failed: password=my secret pass', 'login failed: password=***'],
      ['DB_PASSWORD=my secret pass\nDB_HOST=db', 'DB_PASSWORD=***\nDB_HOST=db'],
      ['host=db password=my secret pass dbname=app', 'host=db password=*** dbname=app'],
      ['Server=db;Pwd=my secret pass;Database=app', 'Server=db;Pwd=***;Database=app'],
      // In a query string a blank ends the URL (a value holds none unencoded): what follows
      // the URL on the line is kept.
      ['GET /orders?token=abc 200 12ms', 'GET /orders?token=*** 200 12ms'],
      [
        'GET https://h/x?a=1&api_key=k3y&b=2 took 5ms',
        'GET https://h/x?a=1&api_key=***&b=2 took 5ms',
      ],
      ['{password=my secret pass, user=ann}', '{password=***, user=ann}'],
      // Two secret pairs in a row are both masked; spaces before the next pair are kept.
      ['password=a b  token=c d', 'password=***  token=***'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('masks every credential word after an Authorization header name', () => {
    for (const [text, masked] of [
      ['Authorization: Bearer abc def', 'Authorization: Bearer ***'],
      ['authorization: basic dXNl cjpw YXNz\nhost: x', 'authorization: basic ***\nhost: x'],
      // The next header on the same line is kept.
      ['authorization: Bearer abcd efgh accept: */*', 'authorization: Bearer *** accept: */*'],
      ['{"Authorization": "Bearer abc def", "x": 1}', '{"Authorization": "***", "x": 1}'],
      [
        "headers: {'authorization': 'Token abcd efgh', 'x': 1}",
        "headers: {'authorization': 'Token ***', 'x': 1}",
      ],
      [
        'proxy-authorization="Basic abcd efgh" status=407',
        'proxy-authorization="Basic ***" status=407',
      ],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('masks a URL password that holds a space, keeping what follows the URL', () => {
    for (const [text, masked] of [
      ['postgres://user:pa ss@host/db', 'postgres://user:***@host/db'],
      [
        'cannot connect to postgres://app:my secret pass@db:5432/app: timeout',
        'cannot connect to postgres://app:***@db:5432/app: timeout',
      ],
      ['redis://default:p w@d@cache:6379/0 is down', 'redis://default:***@cache:6379/0 is down'],
      ['"amqp://guest:a b@rabbit/" refused', '"amqp://guest:***@rabbit/" refused'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('leaves URLs without credentials and the text after them alone', () => {
    for (const text of [
      'http://localhost:8080 is down, mail ops@example.com',
      'GET http://api:8080/users/x failed for ann@example.com',
      'see http://[::1]:80 or write to a@b',
      'https://host/a b@c',
      'connect to http://host: refused by a@b',
    ])
      expect(redactSecrets(text), text).toBe(text)
  })
})

describe('redaction work', () => {
  // The search for the `@` that ends a password with a space must not start over for every
  // URL-like run: `x://u:p ` repeated, with no `@` anywhere, is the worst case for it.
  function scanned(text: string): number {
    let chars = 0
    maskUrlCredentials(text, (n) => {
      chars += n
    })
    return chars
  }

  it('scans each character at most once looking for the end of a userinfo', () => {
    for (const n of [10, 1_000, 100_000]) {
      const text = 'x://u:p '.repeat(n)
      expect(scanned(text), `${n} runs`).toBeLessThanOrEqual(text.length)
      expect(redactSecrets(text)).toBe(text)
    }
  })

  it('masks after long keys and long blank runs (each is read a bounded number of times)', () => {
    // A look back over the key, or a retry at every blank, would make these take minutes.
    const key = 'a.'.repeat(200_000)
    expect(redactSecrets(`?${key}token=x y`)).toBe(`?${key}token=*** y`)
    expect(redactSecrets(`${key}token=x y`)).toBe(`${key}token=***`)
    const blanks = ' '.repeat(200_000)
    expect(redactSecrets(`password=a${blanks}b=1`)).toBe(`password=***${blanks}b=1`)
    expect(redactSecrets(`authorization: Bearer a${blanks}b`)).toBe('authorization: Bearer ***')
  })

  it('scans at most the text, whatever the mix of URLs, blanks, @ and stops', () => {
    const piece = fc.constantFrom('x://u:p', 'a://b:1', ' ', '\t', '@', '\n', '"', '://', 'w', ':')
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 200 }), (pieces) => {
        const text = pieces.join('')
        expect(scanned(text)).toBeLessThanOrEqual(text.length)
      }),
    )
  })
})

describe('redactSecrets on a URL cut short before its @', () => {
  it('masks what follows user: when the run ends in an ellipsis', () => {
    // describeValue (every InvalidOptionError message) cuts a string at 60 characters: a long
    // password loses its @, and with it what marks it as one.
    const url = `redis://default:${'p4ss'.repeat(20)}@cache:6379`
    const message = new InvalidOptionError('url', 'exactly one of url and client', url).message
    expect(redactSecrets(message)).not.toContain('p4ss')
    expect(redactSecrets(message)).toContain('redis://default:***…')
    expect(redactSecrets('nats://app:s3cr3t-that-goes-on…')).toBe('nats://app:***…')
    // Hosts with a port, and paths, are not passwords.
    for (const text of ['http://host:8080/a/long/path…', 'http://host/a:b…', 'see http://host…'])
      expect(redactSecrets(text), text).toBe(text)
  })
})
