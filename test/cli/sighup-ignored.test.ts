// SIGHUP does not end `breakwater relay` or `breakwater saga worker`: a proxy takes it as
// "reload", so an operator (or a script) may send it to every breakwater process, and its
// default action killed these at once, without a drain. They log that they ignore it and run
// on; SIGTERM still stops them gracefully. Found by exploratory testing.
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { spawnCli } from '../process/cli-process.js'
import { createTestSqlite } from '../support/sqlite.js'
import { until } from '../support/until.js'
import { captureLongRunning } from './captured.js'
import { migratedSqlite } from './relay-support.js'

const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

describe('breakwater relay: SIGHUP', () => {
  it('is logged and ignored; SIGTERM then stops it with exit 0', async () => {
    const { url } = await migratedSqlite('relay-sighup', cleanups)
    const relay = spawnCli(['relay', '--db', url, '--broker', 'sql:'])
    cleanups.push(() => relay.kill())
    await relay.waitForLine((l) => l.msg === 'relay started', 'the relay to start')
    relay.child.kill('SIGHUP')
    await relay.waitForLine(
      (l) => typeof l.msg === 'string' && l.msg.startsWith('SIGHUP ignored'),
      'the SIGHUP to be logged',
    )
    expect(relay.child.exitCode).toBeNull()
    relay.child.kill('SIGTERM')
    const exit = await relay.exited
    expect(exit, relay.stderr()).toEqual({ code: 0, signal: null })
    expect(relay.lines.map((l) => l.msg)).toContain('relay stopped')
  })
})

describe('breakwater saga worker: SIGHUP', () => {
  it('is logged and ignored; SIGTERM then stops it with exit 0', async () => {
    const file = createTestSqlite('worker-sighup')
    cleanups.push(() => file.cleanup())
    const db = await openDatabase(file.url)
    await migrateSagas(db)
    await db.close()
    const { lines, signals, stderr, deps } = captureLongRunning()
    const running = sagaWorkerCommand(['--module', module, '--db', file.url], deps)
    await until(() => lines.some((l) => l.msg === 'saga worker started'), 'the worker to start')
    expect(signals.listenerCount('SIGHUP')).toBe(1)
    signals.emit('SIGHUP', 'SIGHUP')
    expect(lines.at(-1)).toMatchObject({ level: 'info', signal: 'SIGHUP' })
    expect(String(lines.at(-1)?.msg)).toMatch(/^SIGHUP ignored/)
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await running, stderr()).toBe(0)
    expect(lines.map((l) => l.msg)).toContain('saga worker stopped')
    expect(signals.listenerCount('SIGHUP')).toBe(0)
  })
})
