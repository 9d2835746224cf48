// Event data and metadata (and stream metadata) JSON would not give back: a Map or Set was
// stored as {}, a function field left out, an object with only #private fields stored as {},
// so the log held another event than the one appended, silently. Refused with INVALID_OPTION
// naming the field and the path; nothing is appended. A class instance with own fields (a
// common shape for domain events) is kept as a plain object of them, on the append's result
// as on every read. Real SQLite and PostgreSQL.
import { beforeAll, describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createEventStore, type EventStore } from '../../src/cqrs/index.js'
import { dbTargets, useTestDb } from './databases.js'

class ItemAdded {
  constructor(
    readonly sku: string,
    readonly quantity: number,
  ) {}
  get label(): string {
    return `${this.quantity} x ${this.sku}`
  }
}

class Sealed {
  #sku = 'a'
  get sku(): string {
    return this.#sku
  }
}

describe.each(dbTargets)('event store JSON values on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_event_json')
  let store: EventStore

  beforeAll(() => {
    store = createEventStore(t.db)
  })

  // Each case's call is refused with INVALID_OPTION naming `option`, its message holding
  // `where`, and nothing is appended (the stream 'bad' is never written).
  async function expectRefused(
    cases: readonly [option: string, where: string, run: () => Promise<unknown>][],
    check: (error: Error) => void = () => {},
  ): Promise<void> {
    const head = await store.headPosition()
    for (const [option, where, run] of cases) {
      const error = await run().then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option })
      expect((error as Error).message).toContain(where)
      check(error as Error)
    }
    expect(await store.headPosition()).toBe(head)
    expect(await store.streamInfo('bad')).toMatchObject({ version: 0, metadata: {} })
  }

  it('refuses data and metadata JSON would change, naming the path, appending nothing', async () => {
    const cases: [string, string, () => Promise<unknown>][] = [
      [
        'events[0].data',
        'a Map at events[0].data.lines',
        () => store.append('bad', [{ type: 'x', data: { lines: new Map([['a', 1]]) } }]),
      ],
      [
        'events[1].data',
        'a Set at events[1].data[0]',
        () =>
          store.append('bad', [
            { type: 'x', data: 1 },
            { type: 'x', data: [new Set([1])] },
          ]),
      ],
      [
        'events[0].data',
        'a function at events[0].data.apply',
        () => store.append('bad', [{ type: 'x', data: { n: 1, apply: () => 1 } }]),
      ],
      [
        'events[0].data',
        'an instance of Sealed',
        () => store.append('bad', [{ type: 'x', data: new Sealed() }]),
      ],
      [
        'events[0].data',
        'a symbol key at events[0].data[Symbol(x)]',
        () => store.append('bad', [{ type: 'x', data: { n: 1, [Symbol('x')]: 1 } }]),
      ],
      [
        'events[0].metadata',
        'a symbol key at events[0].metadata[Symbol(trace)]',
        () => store.append('bad', [{ type: 'x', data: 1, metadata: { [Symbol('trace')]: 'a' } }]),
      ],
      [
        'metadata',
        'a symbol key at metadata[Symbol(acl)]',
        () => store.setStreamMetadata('bad', { [Symbol('acl')]: 1 }),
      ],
      [
        'events[0].metadata',
        'a Set at events[0].metadata.tags',
        () => store.append('bad', [{ type: 'x', data: 1, metadata: { tags: new Set(['a']) } }]),
      ],
      [
        'metadata',
        'a Map at metadata.acl',
        () => store.setStreamMetadata('bad', { acl: new Map() }),
      ],
    ]
    await expectRefused(cases)
  })

  // An invalid Date (its toJSON gives null) was stored as null, and an undefined array element
  // (or a hole) as null, while a function in an array and NaN were refused for the same loss.
  it('refuses an invalid Date and undefined in an array, naming the path', async () => {
    const cases: [string, string, () => Promise<unknown>][] = [
      [
        'events[0].data',
        'an invalid Date at events[0].data.d',
        () => store.append('bad', [{ type: 'x', data: { d: new Date('nope') } }]),
      ],
      [
        'events[0].data',
        'an invalid Date at events[0].data',
        () => store.append('bad', [{ type: 'x', data: new Date(Number.NaN) }]),
      ],
      [
        'events[1].data',
        'undefined at events[1].data[0]',
        () =>
          store.append('bad', [
            { type: 'x', data: 1 },
            { type: 'x', data: [undefined] },
          ]),
      ],
      [
        'events[0].data',
        'undefined at events[0].data.list[1]',
        // A hole reads as undefined: JSON writes null there too.
        () => store.append('bad', [{ type: 'x', data: { list: new Array(3).fill(1, 0, 1) } }]),
      ],
      [
        'events[0].metadata',
        'an invalid Date at events[0].metadata.at',
        () => store.append('bad', [{ type: 'x', data: 1, metadata: { at: new Date('') } }]),
      ],
      [
        'metadata',
        'undefined at metadata.tags[0]',
        () => store.setStreamMetadata('bad', { tags: [undefined] }),
      ],
    ]
    await expectRefused(cases, (error) => {
      expect(error.message).toContain('it would be stored as null')
    })
  })

  it('keeps a valid Date as its ISO string, and null where the caller wrote null', async () => {
    const at = new Date('2026-01-02T03:04:05.678Z')
    const appended = await store.append('dates', [
      { type: 'x', data: { at, list: [null, at], text: 'null' }, metadata: { at } },
    ])
    const read = (await store.readStream('dates')).events[0]!
    const iso = '2026-01-02T03:04:05.678Z'
    expect(read.data).toEqual({ at: iso, list: [null, iso], text: 'null' })
    expect(read.metadata).toEqual({ at: iso })
    expect(appended.events[0]!.data).toEqual(read.data)
  })

  // A throwing toJSON or getter escaped as the caller's own Error, with no code and no path.
  it('wraps a throwing toJSON or getter as INVALID_OPTION with the cause, appending nothing', async () => {
    const boom = new Error('boom')
    const throwingGetter = {
      get total(): number {
        throw boom
      },
    }
    const cases: [string, string, () => Promise<unknown>][] = [
      [
        'events[0].data',
        'events[0].data.amount',
        () =>
          store.append('bad', [
            {
              type: 'x',
              data: {
                amount: {
                  toJSON() {
                    throw boom
                  },
                },
              },
            },
          ]),
      ],
      [
        'events[1].data',
        'events[1].data[0].total',
        () =>
          store.append('bad', [
            { type: 'x', data: 1 },
            // An object literal's getter is an own enumerable field: JSON reads it.
            { type: 'x', data: [throwingGetter] },
          ]),
      ],
      [
        'events[0].metadata',
        'events[0].metadata.user',
        () =>
          store.append('bad', [
            {
              type: 'x',
              data: 1,
              metadata: {
                user: {
                  toJSON() {
                    throw boom
                  },
                },
              },
            },
          ]),
      ],
      [
        'metadata',
        'metadata.acl',
        () =>
          store.setStreamMetadata('bad', {
            acl: {
              toJSON() {
                throw boom
              },
            },
          }),
      ],
    ]
    await expectRefused(cases, (error) => {
      expect(error.message).toContain('boom')
      expect(error.cause).toBe(boom)
    })
  })

  it('keeps a class instance as a plain object of its own fields', async () => {
    const appended = await store.append('cart-1', [
      { type: 'item-added', data: new ItemAdded('a', 2) },
    ])
    const read = (await store.readStream('cart-1')).events[0]!
    expect(read.data).toEqual({ sku: 'a', quantity: 2 })
    expect(Object.getPrototypeOf(read.data)).toBe(Object.prototype)
    expect(appended.events[0]!.data).toEqual(read.data)
  })
})
