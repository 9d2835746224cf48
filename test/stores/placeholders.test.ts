import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { bindPositional, toPositional } from '../../src/stores/placeholders.js'

describe('toPositional', () => {
  it('keeps identity order when placeholders appear once each, in order', () => {
    expect(toPositional('SELECT * FROM t WHERE a = $1 AND b = $2')).toEqual({
      sql: 'SELECT * FROM t WHERE a = ? AND b = ?',
      order: undefined,
      parameterCount: 2,
    })
  })

  it('maps repeated and out-of-order placeholders', () => {
    expect(toPositional('VALUES ($2, $1, $2, $10)')).toEqual({
      sql: 'VALUES (?, ?, ?, ?)',
      order: [1, 0, 1, 9],
      parameterCount: 10,
    })
  })

  it('leaves $ inside identifiers alone', () => {
    expect(toPositional('SELECT price$1, a$$2 FROM t WHERE x=$1')).toEqual({
      sql: 'SELECT price$1, a$$2 FROM t WHERE x=?',
      order: undefined,
      parameterCount: 1,
    })
  })

  it('rejects ? and $0', () => {
    expect(() => toPositional('SELECT ?')).toThrow(InvalidOptionError)
    expect(() => toPositional('SELECT $0')).toThrow(/numbered from \$1/)
  })

  // SQL assembled from tokens: literals, quoted identifiers and comments may contain `$n` and
  // `?`, which must survive untouched, while bare `$n` tokens become `?` mapped to n - 1.
  const literal = fc
    .array(fc.constantFrom('a', ' ', '$1', '$2', '?', "''", '-', '*', '/'), { maxLength: 6 })
    .map((parts) => `'${parts.join('')}'`)
  const quoted = fc
    .array(fc.constantFrom('a', '$3', '?', ' '), { maxLength: 4 })
    .map((parts) => `"${parts.join('')}"`)
  const blockComment = fc
    .array(fc.constantFrom('x', '$1', '?', "'", ' '), { maxLength: 4 })
    .map((parts) => `/*${parts.join('')}*/`)
  const lineComment = fc
    .array(fc.constantFrom('x', '$2', '?', "'"), { maxLength: 4 })
    .map((parts) => `--${parts.join('')}\n`)
  const placeholder = fc.integer({ min: 1, max: 12 }).map((n) => ({ n }))
  const plain = fc.constantFrom('SELECT', ' ', ',', '(', ')', '=', 'x', '1')
  const token = fc.oneof(literal, quoted, blockComment, lineComment, placeholder, plain)

  it('rewrites exactly the bare placeholders, whatever surrounds them', () => {
    fc.assert(
      fc.property(fc.array(token, { maxLength: 30 }), (tokens) => {
        const sql = tokens.map((t) => (typeof t === 'string' ? t : ` $${t.n} `)).join('')
        const expectedSql = tokens.map((t) => (typeof t === 'string' ? t : ' ? ')).join('')
        const numbers = tokens.filter((t): t is { n: number } => typeof t !== 'string')
        const result = toPositional(sql)
        expect(result.sql).toBe(expectedSql)
        expect(result.parameterCount).toBe(Math.max(0, ...numbers.map((t) => t.n)))
        const order = result.order ?? numbers.map((_, i) => i)
        expect(order).toEqual(numbers.map((t) => t.n - 1))
      }),
      { numRuns: 2000 },
    )
  })
})

describe('bindPositional', () => {
  it('passes values through untouched on the identity fast path', () => {
    const params = [1, 'a', null]
    expect(bindPositional(toPositional('$1 $2 $3'), params)).toBe(params)
  })

  it('converts booleans and undefined, and reorders', () => {
    expect(bindPositional(toPositional('$1 $2'), [true, undefined])).toEqual([1, null])
    expect(bindPositional(toPositional('$2 $1 $2'), [false, 'x'])).toEqual(['x', 0, 'x'])
  })

  it('rejects a parameter count that differs from the statement', () => {
    expect(() => bindPositional(toPositional('$1 $2'), [1])).toThrow(
      /params: expected the 2 parameter\(s\) the statement expects, got "1 parameter\(s\)"/,
    )
    expect(() => bindPositional(toPositional('$2 $1'), [1, 2, 3])).toThrow(
      expect.objectContaining({ code: 'INVALID_OPTION', option: 'params' }),
    )
  })
})
