// `breakwater relay` and `breakwater saga worker` bind --metrics-port before they take any work:
// found by exploratory testing, a port in use was reported only after the worker had claimed
// instances and started their steps (then abandoned them) and the relay had published for its
// batches' length, past --drain-timeout-ms. A start that fails after something was started
// closes it within --drain-timeout-ms, or the process ends (exit 1) regardless.
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { runLongRunningCommand } from '../../src/cli/long-running.js'
import { StartupError } from '../../src/cli/process-support.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { createJsonLogger } from '../../src/observability/index.js'
import { createOutbox, migrateOutbox, migrateSqlQueue } from '../../src/outbox/index.js'
import { getSaga, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { pendingCount } from '../outbox/support.js'
import { listenOnLoopback } from '../support/loopback.js'
import { createTestSqlite } from '../support/sqlite.js'
import { until } from '../support/until.js'
import { captureLongRunning } from './captured.js'
import { hanging } from './fixtures/hanging-sagas.js'

const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

/** A loopback port held by another server for the test's length. */
async function heldPort(): Promise<number> {
  const holder = createServer()
  const port = await listenOnLoopback(holder)
  cleanups.push(() => new Promise<void>((resolve) => holder.close(() => resolve())))
  return port
}

describe('a --metrics-port in use', () => {
  it('saga worker: exits 1 naming it, before claiming any instance', async () => {
    const port = await heldPort()
    const file = createTestSqlite('worker-metrics-port')
    cleanups.push(() => file.cleanup())
    const db = await openDatabase(file.url)
    cleanups.push(() => db.close())
    await migrateSagas(db)
    const { id } = await startSaga(db, hanging, {})
    const run = captureLongRunning()
    const code = await sagaWorkerCommand(
      [
        '--module',
        module,
        '--db',
        file.url,
        '--metrics-port',
        String(port),
        '--drain-timeout-ms',
        '1000',
        '--poll-interval-ms',
        '5',
        '--log-level',
        'debug',
      ],
      run.deps,
    )
    expect(code).toBe(1)
    expect(run.stderr()).toContain(`cannot serve metrics on 127.0.0.1:${port}`)
    const msgs = run.lines.map((l) => l.msg)
    expect(msgs).not.toContain('saga claimed')
    expect(msgs).not.toContain('saga step-started')
    expect(msgs).not.toContain('saga abandoned')
    const saga = await getSaga(db, id)
    expect(saga?.leaseOwner).toBeUndefined()
    expect(saga?.steps[0]?.attempts).toBe(0)
  })

  it('relay: exits 1 naming it, before publishing anything', async () => {
    const port = await heldPort()
    const file = createTestSqlite('relay-metrics-port')
    cleanups.push(() => file.cleanup())
    const db = await openDatabase(file.url)
    cleanups.push(() => db.close())
    await migrateOutbox(db)
    await migrateSqlQueue(db)
    const outbox = createOutbox()
    await db.transaction((tx) =>
      outbox.enqueue(
        tx,
        Array.from({ length: 50 }, (_, i) => ({
          aggregateType: 'order',
          aggregateId: `a${i % 5}`,
          type: 'order-placed',
          payload: { i },
        })),
      ),
    )
    const run = captureLongRunning()
    const code = await relayCommand(
      [
        '--db',
        file.url,
        '--broker',
        'sql:',
        '--metrics-port',
        String(port),
        '--drain-timeout-ms',
        '1000',
      ],
      run.deps,
    )
    expect(code).toBe(1)
    expect(run.stderr()).toContain(`cannot serve metrics on 127.0.0.1:${port}`)
    expect(await pendingCount(db)).toBe(50)
  })
})

describe('a start that fails after starting something', () => {
  it('closes it within --drain-timeout-ms, else exits 1 at once', async () => {
    const clock = new ManualClock(Date.now())
    const run = captureLongRunning()
    const running = runLongRunningCommand({
      name: 'test service',
      log: createJsonLogger({ output: run.deps.stdout }),
      deps: { ...run.deps, clock },
      drainTimeoutMs: 1000,
      drainMessage: 'stopping',
      async start(resources) {
        // Work in hand that takes longer than the drain to give up (a batch being published).
        resources.add('worker', () => new Promise<void>(() => {}))
        throw new StartupError('the last step of the start failed')
      },
    })
    await until(() => run.stderr() !== '', 'the start to fail')
    await flushJobs()
    expect(run.exits).toEqual([])
    await clock.advance(1000)
    expect(await running).toBe(1)
    expect(run.exits).toEqual([1])
    expect(run.stderr()).toContain('the last step of the start failed')
    expect(run.lines.at(-1)).toMatchObject({
      level: 'error',
      msg: 'the test service did not stop in time; exiting now',
      phase: 'start',
    })
  })
})
