// A SIGTERM (or Ctrl-C) that comes after a command has finished, while the process waits for
// what is still open to let it exit: nothing listened any more, so SIGTERM's default action
// ended it (143), as if it had been stopped mid-work, although the drain was complete and the
// command had its exit code. main.ts now ends the process with the command's code then. The
// saga module here keeps the event loop alive past the drain, so the moment is the test's.
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { spawnCliFromSources } from '../process/cli-process.js'
import { createTestSqlite } from '../support/sqlite.js'

const module = fileURLToPath(new URL('./fixtures/lingering-sagas.ts', import.meta.url))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

// SIGTERM only: the worker runs through tsx (it loads a TypeScript module), whose own SIGINT
// handling would be under test instead; main.ts handles both signals with the same listener.
describe('a signal after the command finished', () => {
  for (const signal of ['SIGTERM'] as const)
    it(`${signal}: the process ends with the command's exit code (0), not the signal's`, async () => {
      const file = createTestSqlite(`after-stop-${signal}`)
      cleanups.push(() => file.cleanup())
      const db = await openDatabase(file.url)
      await migrateSagas(db)
      await db.close()
      const worker = spawnCliFromSources(['saga', 'worker', '--module', module, '--db', file.url])
      cleanups.push(() => worker.kill())
      await worker.waitForLine((l) => l.msg === 'saga worker started', 'the worker to start')
      worker.child.kill('SIGTERM')
      await worker.waitForLine((l) => l.msg === 'saga worker stopped', 'the drain to finish')
      // The module's timer holds the process open: it is still there to be signalled.
      expect(worker.child.exitCode).toBeNull()
      worker.child.kill(signal)
      expect(await worker.exited, worker.stderr()).toEqual({ code: 0, signal: null })
    })
})
