// createReactor and emitEvent check their outbox and tracker up front: a tracker without
// `record` was a TypeError inside every message's transaction (rolled back, redelivered for
// ever), and emitEvent without an outbox a TypeError with no code, after nothing was checked.
import { describe, expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox } from '../../src/outbox/index.js'
import { createReactor, emitEvent, sagaReplyHandler } from '../../src/saga/index.js'

// Nothing may reach it: the refusal comes first.
const untouched = {
  dialect: 'sqlite' as const,
  query: async () => expect.unreachable('no query for refused options'),
  execute: async () => expect.unreachable('no statement for refused options'),
  transaction: async () => expect.unreachable('no transaction for refused options'),
} as never

const event = { aggregateType: 'order', aggregateId: 'o-1', type: 'order-placed', payload: {} }

async function optionOf(run: () => unknown): Promise<string | undefined> {
  const error = await Promise.resolve()
    .then(run)
    .catch((e: unknown) => e)
  expect(error).toBeInstanceOf(InvalidOptionError)
  return (error as InvalidOptionError).option
}

describe('createReactor options', () => {
  it.each([{}, { record: 'no' }, 42])('refuses a tracker without record (%j)', async (tracker) => {
    const options = {
      db: untouched,
      consumer: 'payments',
      outbox: createOutbox(),
      reactions: {},
      tracker: tracker as never,
    }
    expect(await optionOf(() => createReactor(options))).toBe('tracker')
  })
})

describe('misspelt options', () => {
  // Dropped without a word: ignored replies vanished unreported, flows went untracked.
  it('sagaReplyHandler refuses an unknown option', async () => {
    const options = { onIgnore: () => {} } as never
    expect(await optionOf(() => sagaReplyHandler(untouched, options))).toBe('options.onIgnore')
  })

  it('createReactor refuses an unknown option', async () => {
    const options = {
      db: untouched,
      consumer: 'payments',
      outbox: createOutbox(),
      reactions: {},
      traker: {},
    } as never
    expect(await optionOf(() => createReactor(options))).toBe('options.traker')
  })
})

describe('emitEvent options', () => {
  it('refuses a missing outbox before writing anything', async () => {
    expect(await optionOf(() => emitEvent(untouched, { outbox: undefined as never }, event))).toBe(
      'options.outbox',
    )
  })

  // A misspelt tracker left the flow's first event unrecorded: the flow, known by no first
  // event, was never reported stalled.
  it('refuses an unknown option before the event is enqueued', async () => {
    const options = { outbox: createOutbox(), traker: {} } as never
    expect(await optionOf(() => emitEvent(untouched, options, event))).toBe('options.traker')
  })

  it('refuses a tracker without record before the event is enqueued', async () => {
    const options = { outbox: createOutbox(), tracker: {} as never }
    expect(await optionOf(() => emitEvent(untouched, options, event))).toBe('options.tracker')
  })
})
