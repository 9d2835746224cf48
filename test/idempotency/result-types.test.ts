// idempotent(), Idempotency.run and ctx.phase give back the JSON round trip of fn's result (a
// replay, and the first call too), so their result is typed Jsonified<T>, not T: typed T, a
// class instance's method or a Date's getTime() compiled and crashed on the replay. `npm run
// typecheck` checks the expectTypeOf lines; the cases below check the runtime agrees.
import { describe, expect, expectTypeOf, it } from 'vitest'
import {
  createIdempotency,
  createMemoryIdempotencyStore,
  type IdempotencyContext,
  idempotent,
  type Jsonified as JsonifiedFromIdempotency,
} from '../../src/idempotency/index.js'
import type { Jsonified } from '../../src/index.js'

class Money {
  constructor(
    readonly cents: number,
    readonly at: Date,
  ) {}
  format(): string {
    return `${this.cents / 100}`
  }
}

describe('Jsonified<T>', () => {
  it('maps a JSON shape to itself', () => {
    expectTypeOf<Jsonified<{ id: string; n: number }>>().toEqualTypeOf<{ id: string; n: number }>()
    expectTypeOf<Jsonified<readonly { ok: boolean; tags: string[] }[]>>().toEqualTypeOf<
      readonly { ok: boolean; tags: string[] }[]
    >()
    expectTypeOf<Jsonified<'a' | 'b' | null>>().toEqualTypeOf<'a' | 'b' | null>()
    expectTypeOf<Jsonified<Record<string, number>>>().toEqualTypeOf<Record<string, number>>()
    expectTypeOf<Jsonified<[string, number]>>().toEqualTypeOf<[string, number]>()
    expectTypeOf<Jsonified<undefined>>().toEqualTypeOf<undefined>()
    expectTypeOf<Jsonified<void>>().toEqualTypeOf<void>()
    expectTypeOf<Jsonified<unknown>>().toBeUnknown()
    // biome-ignore lint/suspicious/noExplicitAny: what an untyped result maps to is the case
    expectTypeOf<Jsonified<any>>().toBeAny()
    expectTypeOf<JsonifiedFromIdempotency<{ a: number }>>().toEqualTypeOf<{ a: number }>()
  })

  it('types what JSON gives back: toJSON, dropped members, optional undefined', () => {
    expectTypeOf<Jsonified<Date>>().toEqualTypeOf<string>()
    expectTypeOf<Jsonified<Money>>().toEqualTypeOf<{
      readonly cents: number
      readonly at: string
    }>()
    expectTypeOf<Jsonified<{ when: Date | null; list: Money[] }>>().toEqualTypeOf<{
      when: string | null
      list: { readonly cents: number; readonly at: string }[]
    }>()
    expectTypeOf<
      Jsonified<{ a?: string; b: string | undefined; c: () => void; [Symbol.iterator]: 1 }>
    >().toEqualTypeOf<{ a?: string; b?: string }>()
    expectTypeOf<Jsonified<{ toJSON(): { v: number } }>>().toEqualTypeOf<{ v: number }>()
    expectTypeOf<Jsonified<bigint>>().toBeNever()
  })
})

describe('results typed as their JSON round trip', () => {
  const money = (): Money => new Money(1250, new Date(Date.UTC(2024, 0, 2)))

  it('idempotent() returns Jsonified<T>, and a replay is that shape', async () => {
    const store = createMemoryIdempotencyStore()
    const first = await idempotent('k', money, { store })
    const again = await idempotent('k', money, { store })
    expectTypeOf(again).toEqualTypeOf<{ readonly cents: number; readonly at: string }>()
    // @ts-expect-error a replay has no methods: format() would throw a TypeError
    expect(() => again.format()).toThrow(TypeError)
    expect(again).toEqual({ cents: 1250, at: '2024-01-02T00:00:00.000Z' })
    expect(first).toEqual(again)
    const plain = await idempotent('p', () => ({ id: 'a', n: 1 }), { store })
    expectTypeOf(plain).toEqualTypeOf<{ id: string; n: number }>()
    const none = await idempotent('v', () => undefined, { store })
    expectTypeOf(none).toEqualTypeOf<undefined>()
  })

  it('Idempotency.run and ctx.phase return Jsonified<T>', async () => {
    const idempotency = createIdempotency({ store: createMemoryIdempotencyStore() })
    const run = await idempotency.run('k', async (ctx: IdempotencyContext) => {
      const at = await ctx.phase('stamp', () => new Date(Date.UTC(2024, 0, 2)))
      expectTypeOf(at).toEqualTypeOf<string>()
      expect(at).toBe('2024-01-02T00:00:00.000Z')
      return { at: new Date(at) }
    })
    expectTypeOf(run).toEqualTypeOf<{ at: string }>()
    expect(run).toEqual({ at: '2024-01-02T00:00:00.000Z' })
  })
})
