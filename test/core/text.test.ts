// jsonTextOf, shared by the capabilities that store JSON (saga inputs, replies and tracked
// payloads, outbox payloads, event data): a value JSON cannot hold is refused with
// INVALID_OPTION instead of being stored as another value.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { jsonTextOf, maxJsonDepth } from '../../src/core/text.js'

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

  it('refuses what JSON would lose, naming the path: Map, Set, function, symbol, BigInt, cycle', () => {
    class Hidden {
      #secret = 1
      get secret(): number {
        return this.#secret
      }
    }
    const cyclic: { self?: unknown } = {}
    cyclic.self = { back: cyclic }
    const cases: [unknown, string][] = [
      [{ byId: new Map([['a', 1]]) }, 'a Map at v.byId has no JSON form: it would be stored as {}'],
      [[new Set([1])], 'a Set at v[0] has no JSON form: it would be stored as {}'],
      [{ f: () => 1 }, 'a function at v.f has no JSON form: it would be left out'],
      [[1, Symbol('s')], 'a symbol at v[1] has no JSON form: it would be stored as null'],
      [
        { a: { [Symbol('k')]: 1 } },
        'a symbol key at v.a[Symbol(k)] has no JSON form: it would be left out',
      ],
      [{ deep: { n: 10n } }, 'a BigInt at v.deep.n has no JSON form'],
      [cyclic, 'at v.self.back has no JSON form: JSON cannot hold a cycle'],
      [{ h: new Hidden() }, 'an instance of Hidden without own enumerable fields or toJSON at v.h'],
      [{ e: new Error('boom') }, 'an instance of Error without own enumerable fields'],
      [{ m: { toJSON: () => new Map() } }, 'a Map at v.m has no JSON form'],
      [new Map(), 'a Map at v has no JSON form'],
      [() => 1, 'a function has no JSON text'],
      [{ toJSON: () => undefined }, 'an object whose toJSON gave undefined has no JSON text'],
      [Symbol('s'), 'a symbol has no JSON text'],
    ]
    for (const [value, where] of cases) {
      const error = refusal('v', value)
      expect(error.code).toBe('INVALID_OPTION')
      expect(error.option).toBe('v')
      expect(error.message).toContain(where)
    }
  })

  // Moved here from the event store (fba9e58), so every capability storing JSON refuses them.
  it('refuses what JSON writes as a null the caller did not write: invalid Date, undefined in an array', () => {
    const cases: [unknown, string][] = [
      [
        { at: new Date('nope') },
        'an invalid Date at v.at has no JSON form: it would be stored as null',
      ],
      [new Date(Number.NaN), 'an invalid Date at v has no JSON form'],
      [
        { list: [1, undefined] },
        'undefined at v.list[1] has no JSON form: it would be stored as null',
      ],
      [new Array(3).fill(1, 0, 1), 'undefined at v[1] has no JSON form'],
      [{ m: { toJSON: () => [undefined] } }, 'undefined at v.m[0] has no JSON form'],
    ]
    for (const [value, where] of cases) {
      const error = refusal('v', value)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'v' })
      expect(error.message).toContain(where)
    }
    expect(jsonTextOf('v', { a: undefined, at: new Date(0), list: [null] })).toBe(
      '{"at":"1970-01-01T00:00:00.000Z","list":[null]}',
    )
  })

  it('wraps a throwing toJSON or getter as INVALID_OPTION naming the path, the error as cause', () => {
    const boom = new Error('boom')
    const cases: [unknown, string][] = [
      [
        {
          a: {
            toJSON: () => {
              throw boom
            },
          },
        },
        'the toJSON at v.a threw: Error: boom',
      ],
      [
        [
          {
            get n(): number {
              throw boom
            },
          },
        ],
        'reading the field at v[0].n threw: Error: boom',
      ],
      [
        {
          toJSON: () => {
            throw boom
          },
        },
        'the toJSON at v threw: Error: boom',
      ],
    ]
    for (const [value, where] of cases) {
      const error = refusal('v', value)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'v' })
      expect(error.message).toContain(where)
      expect(error.cause).toBe(boom)
      expect(Object.keys(error)).not.toContain('cause')
    }
    // A toJSON that throws only once (for JSON.stringify): the walk finds nothing to name.
    let calls = 0
    const flaky = {
      toJSON() {
        if (calls++ === 0) throw boom
        return 1
      },
    }
    const error = refusal('v', { flaky })
    expect(error.message).toContain('its JSON form threw: Error: boom')
    expect(error.cause).toBe(boom)
  })

  // The walk recursed without a bound: past about 2,000 levels its stack overflowed and the
  // value was refused as "walking the value at <root> threw: RangeError", at a depth that
  // depended on how deep the caller's own stack was. Now a fixed, named limit.
  it(`keeps values nested ${maxJsonDepth} levels deep and refuses deeper ones, naming the limit`, () => {
    const nested = (depth: number, leaf: unknown = 1): unknown => {
      let value = leaf
      for (let i = 0; i < depth; i++) value = i % 2 === 0 ? { a: value } : [value]
      return value
    }
    expect(JSON.parse(jsonTextOf('payload', nested(maxJsonDepth)))).toEqual(nested(maxJsonDepth))
    for (const depth of [maxJsonDepth + 1, 5_000, 50_000]) {
      const error = refusal('payload', nested(depth))
      expect(error.message).toContain(`nested more than ${maxJsonDepth} levels deep`)
      expect(error.message).not.toContain('RangeError')
      // The path is cut short: its first and last 8 steps, and how many are left out.
      expect(error.message).toContain(`…(${maxJsonDepth - 16} more)…`)
      expect(error.message.length).toBeLessThan(400)
    }
    // A loss below the limit is still named by its path.
    expect(refusal('payload', nested(3, Number.NaN)).message).toContain('payload.a[0].a')
  })

  it('keeps class instances as their own enumerable fields, Dates, toJSON and shared objects', () => {
    class Money {
      constructor(
        readonly amount: number,
        readonly currency: string,
      ) {}
      double(): Money {
        return new Money(this.amount * 2, this.currency)
      }
    }
    const shared = { x: 1 }
    const value = {
      price: new Money(5, 'EUR'),
      at: new Date(Date.UTC(2026, 0, 1)),
      skipped: undefined,
      list: [shared, shared, null],
      bare: Object.assign(Object.create(null), { y: 2 }),
      boxed: [Object(3), Object('s'), Object(true)],
    }
    expect(JSON.parse(jsonTextOf('v', value))).toEqual({
      price: { amount: 5, currency: 'EUR' },
      at: '2026-01-01T00:00:00.000Z',
      list: [{ x: 1 }, { x: 1 }, null],
      bare: { y: 2 },
      boxed: [3, 's', true],
    })
    expect(jsonTextOf('v', {})).toBe('{}')
    expect(jsonTextOf('v', Object.create(null))).toBe('{}')
  })
})
