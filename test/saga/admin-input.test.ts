// The admin functions refuse an id (or step) that is not a string before asking the database:
// SQLite's driver threw a bare TypeError (no code) for an object, PostgreSQL said "not found"
// for it, and `undefined` or a number read as "No saga instance has the id undefined".
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import {
  cancelSaga,
  deliverReply,
  getSaga,
  getSagaTimeline,
  retrySaga,
  sagaReplyHandler,
} from '../../src/saga/index.js'

// Nothing may reach it: the refusal comes first.
const untouched = {
  dialect: 'sqlite' as const,
  query: async () => expect.unreachable('no query for a refused id'),
  execute: async () => expect.unreachable('no statement for a refused id'),
  transaction: async () => expect.unreachable('no transaction for a refused id'),
} as never

const operations = {
  getSaga: (id: unknown) => getSaga(untouched, id as never),
  getSagaTimeline: (id: unknown) => getSagaTimeline(untouched, id as never),
  retrySaga: (id: unknown) => retrySaga(untouched, id as never),
  cancelSaga: (id: unknown) => cancelSaga(untouched, id as never),
  deliverReply: (id: unknown) => deliverReply(untouched, id as never, 'charge', {}),
}

describe('saga admin functions refuse an id that is not a string', () => {
  for (const [name, operation] of Object.entries(operations)) {
    it.each([undefined, 42, {}, ['a'], ''])(`${name}(%j)`, async (id) => {
      const error = await operation(id).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe(name === 'deliverReply' ? 'sagaId' : 'id')
    })
  }

  // `by` is written to the worker column as it is: PostgreSQL refused a NUL there with a bare
  // driver error (22021) where SQLite stored it.
  it.each([
    ['cancelSaga', cancelSaga],
    ['retrySaga', retrySaga],
  ] as const)('%s refuses a `by` that no text column can hold', async (_name, operation) => {
    for (const by of ['op\u0000x', 'op\ud800', '']) {
      const error = await operation(untouched, 'order-1', { by }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as InvalidOptionError).option).toBe('options.by')
    }
  })

  // A forgotten reply (plain JS) was recorded as null and the step went on with it, where an
  // undefined input is refused: null is the explicit "no reply".
  it('deliverReply refuses an undefined reply, naming reply', async () => {
    const error = await deliverReply(untouched, 'order-1', 'charge', undefined).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('reply')
    expect((error as InvalidOptionError).message).toContain('pass null for none')
  })

  it('deliverReply refuses a step that is not a string', async () => {
    const error = await deliverReply(untouched, 'order-1', 7 as never, {}).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe('step')
  })
})

describe('sagaReplyHandler', () => {
  it('ignores a reply whose correlation-id or saga-step header is empty (it would be redelivered forever)', async () => {
    const ignored: string[] = []
    const handler = sagaReplyHandler(untouched, { onIgnored: (_m, reason) => ignored.push(reason) })
    for (const headers of [
      { 'correlation-id': '', 'saga-step': 'charge' },
      { 'correlation-id': 'order-1', 'saga-step': '' },
    ]) {
      await handler({
        id: 'm1',
        topic: 'saga.replies',
        key: 'k',
        payload: '{}',
        headers,
      } as never)
    }
    expect(ignored).toHaveLength(2)
  })
})
