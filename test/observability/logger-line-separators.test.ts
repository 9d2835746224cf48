// U+2028 and U+2029 (and U+0085, NEL) are valid unescaped in JSON, and JSON.stringify leaves
// them so; but line-oriented readers end a line there: Python's str.splitlines(), log shippers
// that split on Unicode line breaks. A logged value holding one (a file name, a request path,
// an upstream's error text) cut its record in two, and neither part parsed.
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../src/observability/index.js'
import { splitLines } from '../support/unicode-lines.js'

function capture(): { write(text: string): void; text(): string } {
  let text = ''
  return {
    write(t: string) {
      text += t
    },
    text: () => text,
  }
}

describe('JSON log lines and Unicode line separators', () => {
  it('escapes U+2028, U+2029 and U+0085 wherever they occur, and the values read back as logged', () => {
    const out = capture()
    const odd = 'a\u2028b\u2029c\u0085d'
    const log = createJsonLogger({ output: out, fields: { bound: odd } })
    const error = new Error(`failed at ${odd}`)
    log.info(`msg ${odd}`, { value: odd, [`key ${odd}`]: 1, nested: [{ deep: odd }], error })
    log.child({ child: odd }).warn('second', { map: new Map([[odd, odd]]) })

    const text = out.text()
    expect(text).not.toMatch(/[\u2028\u2029\u0085]/)
    expect(text).toContain('\\u2028')
    expect(text).toContain('\\u2029')
    expect(text).toContain('\\u0085')
    // Split as Python splits: two records, each one whole JSON object.
    const lines = splitLines(text)
    expect(lines).toHaveLength(2)
    const [first, second] = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(first).toMatchObject({
      msg: `msg ${odd}`,
      bound: odd,
      value: odd,
      [`key ${odd}`]: 1,
      nested: [{ deep: odd }],
      error: { type: 'Error', message: `failed at ${odd}` },
    })
    expect(second).toMatchObject({ msg: 'second', bound: odd, child: odd, map: { [odd]: odd } })
  })
})
