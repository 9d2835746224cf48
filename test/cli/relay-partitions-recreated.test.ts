// `breakwater relay` (a real process, SQLite) when rows of breakwater_outbox_partitions were
// deleted by hand: the relay recreates them (see test/outbox/missing-partitions.test.ts) and now
// logs a warning saying how many; it logged nothing, so an operator's mistake went unseen.
import { afterAll, describe, expect, it } from 'vitest'
import { outboxPartitionsTable } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { runCli, spawnCli } from '../process/cli-process.js'
import { createTestSqlite } from '../support/sqlite.js'

const cleanups: Array<() => Promise<void> | void> = []
afterAll(async () => {
  for (const fn of cleanups.reverse()) await fn()
})

describe('breakwater relay: partition rows deleted by hand', () => {
  it('warns once with the count of rows it recreated, then holds all 64', async () => {
    const file = createTestSqlite('relay-cli-partitions-recreated')
    cleanups.push(() => file.cleanup())
    const migrated = await runCli(['migrate', '--db', file.url])
    expect(migrated.code, migrated.stderr).toBe(0)
    const db = await openDatabase(file.url)
    cleanups.push(() => db.close())
    await db.execute(`DELETE FROM ${outboxPartitionsTable} WHERE partition_no IN (3, 40)`)

    const relay = spawnCli(['relay', '--db', file.url])
    cleanups.push(() => relay.kill())
    const started = await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    expect(started).toMatchObject({ partitions: 64 })
    const warnings = relay.lines.filter((l) => l.msg === 'missing partition rows recreated')
    expect(warnings).toHaveLength(1)
    expect(warnings[0]).toMatchObject({ level: 'warn', count: 2, table: outboxPartitionsTable })
    relay.child.kill('SIGTERM')
    expect((await relay.exited).code, relay.stderr()).toBe(0)
  })
})
