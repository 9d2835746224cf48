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
    const head = await store.headPosition()
    for (const [option, where, run] of cases) {
      const error = await run().then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ code: 'INVALID_OPTION', option })
      expect((error as Error).message).toContain(where)
    }
    expect(await store.headPosition()).toBe(head)
    expect(await store.streamInfo('bad')).toMatchObject({ version: 0, metadata: {} })
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
