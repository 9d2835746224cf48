// `null` for an option was taken as its default by most of breakwater/cqrs (`?? default`):
// `append(s, events, { expectedVersion: null })` appended at any version, so a caller writing
// `expectedVersion: loaded?.version ?? null` silently lost its concurrency check, and
// `createCommandHandler({ maxAttempts: null })` retried 5 times, while `snapshots.every: null`
// was refused. One rule now: null is refused with InvalidOptionError (INVALID_OPTION) naming
// the option; only undefined (or leaving it out) means the default. On real SQLite and
// PostgreSQL; every other option's null is refused in unknown-options.test.ts.
import { beforeAll, describe, expect, it } from 'vitest'
import { createEventStore, type EventStore } from '../../src/cqrs/index.js'
import { optionRefusal } from '../support/unknown-option.js'
import { dbTargets, useTestDb } from './databases.js'

describe.each(dbTargets)('expectedVersion: null on $dialect', (target) => {
  const t = useTestDb(target, 'cqrs_null_expected')
  let store: EventStore
  const opened = { type: 'opened', data: { owner: 'a' } }

  beforeAll(async () => {
    store = createEventStore(t.db)
    await store.append('s1', [opened])
    await store.setStreamMetadata('s1', { a: 1 })
  })

  it('is refused by append, deleteStream and setStreamMetadata; nothing changes', async () => {
    const head = await store.headPosition()
    const writes: [string, () => Promise<unknown>][] = [
      ['append', () => store.append('s1', [opened], { expectedVersion: null as never })],
      ['deleteStream', () => store.deleteStream('s1', { expectedVersion: null as never })],
      [
        'setStreamMetadata',
        () => store.setStreamMetadata('s1', { a: 2 }, { expectedVersion: null as never }),
      ],
    ]
    for (const [, write] of writes) {
      const error = await optionRefusal(write)
      expect(error.option).toBe('expectedVersion')
      expect(error.value).toBeNull()
    }
    expect(await store.headPosition()).toBe(head)
    expect(await store.streamInfo('s1')).toMatchObject({
      version: 1,
      exists: true,
      metadata: { a: 1 },
    })
  })

  it('undefined still means any', async () => {
    const result = await store.append('s1', [opened], { expectedVersion: undefined as never })
    expect(result.version).toBe(2)
  })
})
