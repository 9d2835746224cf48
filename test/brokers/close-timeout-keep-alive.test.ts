// close() waiting out closeTimeoutMs for a handler that never settles holds the process open
// until it answers. The wait's timer was the clock's (unreferenced), and on the SQL queue on
// SQLite nothing else holds a process that is shutting down: the process exited mid-close, so
// close() never answered and the rest of the shutdown (closing the database) never ran. The
// dispatcher the broker adapters close through waits the same way.
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { spawnNode } from '../process/cli-process.js'
import { compiledFixture } from '../support/compiled-fixture.js'
import { createTestSqlite } from '../support/sqlite.js'

const fixture = fileURLToPath(new URL('./fixtures/stuck-close.ts', import.meta.url))
const sqlite = createTestSqlite('stuck-close')
afterAll(() => sqlite.cleanup())

describe('close() giving up on a stuck handler holds the process until it answers', () => {
  it.each([
    ['the SQL queue on SQLite', 'queue'],
    ['the dispatcher', 'dispatcher'],
  ] as const)('%s', async (_name, mode) => {
    const bundle = await compiledFixture(fixture)
    const child = spawnNode(mode === 'queue' ? [bundle, mode, sqlite.url] : [bundle, mode])
    try {
      await child.waitForLine((line) => line.ready === true, 'ready')
      await child.waitForLine((line) => line.started !== undefined, 'the handler to start')
      child.child.kill('SIGTERM')
      expect(await child.exited).toEqual({ code: 0, signal: null })
      expect(child.lines).toContainEqual({
        closed: mode === 'queue' ? 'SUBSCRIPTION_CLOSE_TIMEOUT' : 'unfinished 1',
      })
      expect(child.lines).toContainEqual({ stopped: true })
    } finally {
      child.kill()
    }
  })
})
