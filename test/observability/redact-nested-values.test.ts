// A secret-named member whose value is an object or an array (`{ password: { value: 'x' } }`,
// `{"token":["a","b"]}`) is masked whole, brackets and all: the names inside it are not secret
// names, so a pass that masked only the first word left the secret itself in the line.
import { inspect } from 'node:util'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'
import { maskNamedValues, redactSecrets } from '../../src/observability/redact.js'

describe('redactSecrets on a secret-named member holding an object or array', () => {
  it('masks the whole nested value, keeping what follows it', () => {
    for (const [text, masked] of [
      ["{ password: { value: 'x' } }", '{ password: *** }'],
      ['{"password":{"value":"x"}}', '{"password":***}'],
      ['{"token":["a","b"],"n":1}', '{"token":***,"n":1}'],
      ['{ password: [ "a", "b" ], n: 1 }', '{ password: ***, n: 1 }'],
      [
        "bad config { db: { password: { value: 'x' } }, port: 5 }",
        'bad config { db: { password: *** }, port: 5 }',
      ],
      // Brackets and quotes inside the value's strings do not end it early.
      ['{"password":{"v":"x}]","w":[1,{"a":"y"}]},"n":2}', '{"password":***,"n":2}'],
      ["{ secret: { a: 'it\\'s }', b: 'y' }, n: 2 }", '{ secret: ***, n: 2 }'],
      // JSON quoted in a JSON string.
      ['{\\"password\\":{\\"value\\":\\"x\\"},\\"n\\":1}', '{\\"password\\":***,\\"n\\":1}'],
      // util.inspect's class and null-prototype prefixes.
      ["{ password: Secret { value: 'x' }, n: 1 }", '{ password: ***, n: 1 }'],
      ["{ password: [Object: null prototype] { value: 'x' }, n: 1 }", '{ password: ***, n: 1 }'],
      // An INI / TOML inline table.
      ['password = { value = "x" }\nhost = "db"', 'password = ***\nhost = "db"'],
    ])
      expect(redactSecrets(text!), text).toBe(masked)
  })

  it('masks a value util.inspect spreads over several lines', () => {
    const text = inspect(
      {
        host: 'db',
        password: { value: 'pw-one', history: ['pw-two', 'pw-three'], note: 'x'.repeat(80) },
        port: 5432,
      },
      { breakLength: 40 },
    )
    expect(text).toContain('\n')
    const masked = redactSecrets(text)
    for (const secret of ['pw-one', 'pw-two', 'pw-three'])
      expect(masked, masked).not.toContain(secret)
    expect(masked).toContain("host: 'db'")
    expect(masked).toContain('port: 5432')
  })

  it('masks to the end of the text when the value never closes (a message cut short)', () => {
    expect(redactSecrets("{ password: { value: 'x', n: 1")).toBe('{ password: ***')
  })

  it('is what the logger writes for a message and an error message', () => {
    let out = ''
    const output = {
      write(text: string) {
        out += text
      },
    }
    const log = createJsonLogger({ output })
    log.error("bad options { password: { value: 'x1' } }", {
      error: new Error('{"password":{"value":"x2"}}'),
    })
    expect(out).not.toContain('x1')
    expect(out).not.toContain('x2')
  })
})

describe('nested-value redaction work', () => {
  function scanned(text: string): number {
    let chars = 0
    maskNamedValues(text, (n) => {
      chars += n
    })
    return chars
  }

  // Inputs that make a bracket-matching regular expression (`\{(?:[^{}]|\{[^{}]*\})*\}` and
  // the like) backtrack without end: long unclosed or deeply nested values, many of them. Each
  // is given with what it is masked to.
  const adversarial: [string, string][] = [
    [`{ password: { ${'a'.repeat(200_000)}`, '{ password: ***'],
    [`password: ${'{'.repeat(100_000)}`, 'password: ***'],
    [`password: ${'[{"a":'.repeat(30_000)}`, 'password: ***'],
    ['password: { '.repeat(30_000), 'password: ***'],
    ['password: {}, '.repeat(30_000), 'password: ***, '.repeat(30_000)],
    [`password: { "${'\\"'.repeat(100_000)}`, 'password: ***'],
    [`password: ${'{a: 1} '.repeat(30_000)}`, 'password: *** '],
    [`{ password: Secret ${'x '.repeat(100_000)}`, '{ password: *** '],
  ]

  it('reads each character a bounded number of times', () => {
    for (const [text] of adversarial)
      expect(scanned(text), text.slice(0, 30)).toBeLessThanOrEqual(3 * text.length)
  })

  it('still masks such values', () => {
    for (const [text, masked] of adversarial)
      expect(redactSecrets(text) === masked, text.slice(0, 30)).toBe(true)
  })
})
