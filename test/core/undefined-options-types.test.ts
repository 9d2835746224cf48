// The docs' rule is that an option given as undefined means its default, as leaving it out
// does, and the runtime agrees (test/*/null-options.test.ts walk every option as undefined).
// The option types said `name?: T`, so a caller compiling with exactOptionalPropertyTypes (as
// this repository does) got TS2379 forwarding an optional value: docs/outbox.md's own paging
// example (`afterId: page.at(-1)?.id`) or `{ maxAttempts: cfg.maxAttempts }`. The types now say
// `name?: T | undefined`: this file failed to typecheck before.
import { describe, expect, expectTypeOf, it } from 'vitest'
import { retry } from '../../src/index.js'
import { type ListDeadOptions, listDead } from '../../src/outbox/index.js'
import { createSqliteDriver } from '../../src/stores/index.js'

describe('an optional option forwarded as a possibly undefined value', () => {
  it('compiles and is taken as left out', async () => {
    const afterId = undefined as number | undefined
    const maxAttempts = undefined as number | undefined
    expectTypeOf({ limit: 100, afterId }).toExtend<ListDeadOptions>()

    // Built as with maxAttempts left out (null-options.test.ts walks every option so).
    expect(() => retry({ maxAttempts })).not.toThrow()

    const db = await createSqliteDriver({ filename: ':memory:' })
    try {
      // listDead reads the outbox table: with none, the call passed its option checks.
      const listed = await listDead(db, { limit: 100, afterId }).catch((e: unknown) => e)
      expect(listed).not.toMatchObject({ code: 'INVALID_OPTION' })
    } finally {
      await db.close()
    }
  })
})
