// jsonTextOf, shared by the capabilities that store JSON (saga inputs, replies and tracked
// payloads, outbox payloads, event data): a value JSON cannot hold is refused with
// INVALID_OPTION instead of being stored as another value.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { jsonTextOf } from '../../src/core/text.js'

function refusal(option: string, value: unknown): InvalidOptionError {
  try {
    jsonTextOf(option, value)
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidOptionError)
    return error as InvalidOptionError
  }
  throw new Error(`jsonTextOf accepted ${String(value)}`)
}

describe('jsonTextOf', () => {
  it('refuses NaN and ±Infinity anywhere in the value, naming where, instead of writing null', () => {
    const cases: [unknown, string][] = [
      [Number.NaN, 'NaN at input has'],
      [{ a: [1, Number.POSITIVE_INFINITY] }, 'Infinity at input.a[1] has'],
      [{ deep: { 'odd key': Number.NEGATIVE_INFINITY } }, '-Infinity at input.deep["odd key"] has'],
      [[{ n: null }, { n: new Number(Number.NaN) }], 'NaN at input[1].n has'],
      [{ m: { toJSON: () => ({ x: Number.NaN }) } }, 'NaN at input.m.x has'],
    ]
    for (const [value, where] of cases) {
      const error = refusal('input', value)
      expect(error.code).toBe('INVALID_OPTION')
      expect(error.option).toBe('input')
      expect(error.message).toContain('input: expected a JSON-serializable value (')
      expect(error.message).toContain(where)
    }
  })

  it('keeps null, -0 and a toJSON that hides a non-finite number', () => {
    expect(jsonTextOf('v', { a: null, b: -0 })).toBe('{"a":null,"b":0}')
    const hidden = { n: Number.NaN, toJSON: () => ({ n: null }) }
    expect(jsonTextOf('v', [hidden])).toBe('[{"n":null}]')
    expect(jsonTextOf('v', null)).toBe('null')
  })

  it('still refuses what has no JSON text', () => {
    expect(refusal('v', undefined).option).toBe('v')
    expect(refusal('v', () => 1).option).toBe('v')
    expect(refusal('v', { n: 1n }).message).toContain('BigInt')
  })
})
