// `breakwater saga worker`'s drain bounds the worker's own stop: an instance whose step never
// returns is abandoned (logged at warn) a margin before --drain-timeout-ms, so that the process
// still closes the database and logs its last line before it exits 1. Driven on a test clock.
import { EventEmitter } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { sagaWorkerCommand, workerStopTimeoutMs } from '../../src/cli/saga-worker.js'
import { getSaga, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { flushJobs, ManualClock } from '../../src/testing/index.js'
import { createTestSqlite } from '../support/sqlite.js'
import { until } from '../support/until.js'
import { captureLongRunning } from './captured.js'
import { hanging } from './fixtures/hanging-sagas.js'

const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))

describe('workerStopTimeoutMs', () => {
  it('leaves a margin to close the database, never more than the drain itself', () => {
    expect(workerStopTimeoutMs(30_000)).toBe(28_000)
    expect(workerStopTimeoutMs(10_000)).toBe(9_000)
    expect(workerStopTimeoutMs(100)).toBe(90)
    expect(workerStopTimeoutMs(0)).toBe(0)
  })
})

describe('breakwater saga worker: a step that never returns during the drain', () => {
  it('is abandoned (warn) before the drain timeout; the worker stops, logs it and exits 1', async () => {
    const file = createTestSqlite('saga-worker-drain')
    const db = await openDatabase(file.url)
    try {
      await migrateSagas(db)
      const { id } = await startSaga(db, hanging, {})
      const clock = new ManualClock(Date.now())
      const { lines, exits, signals, stderr, deps } = captureLongRunning()
      const running = sagaWorkerCommand(
        [
          '--module',
          module,
          '--db',
          file.url,
          '--drain-timeout-ms',
          '10000',
          '--log-level',
          'debug',
        ],
        { ...deps, clock },
      )
      await until(
        () => lines.some((l) => l.msg === 'saga step-started' && l.sagaId === id),
        'the stuck step to start',
      )
      signals.emit('SIGTERM', 'SIGTERM')
      await flushJobs()
      // Short of the drain timeout (10 s): only the worker's own bound falls due.
      await clock.advance(workerStopTimeoutMs(10_000))
      expect(await running, stderr()).toBe(1)
      expect(exits).toEqual([1])
      const abandoned = lines.find((l) => l.msg === 'saga abandoned')
      expect(abandoned).toMatchObject({ level: 'warn', sagaId: id })
      const msgs = lines.map((l) => l.msg)
      expect(msgs).toContain('saga worker stopped')
      expect(lines.at(-1)).toMatchObject({
        level: 'error',
        msg: 'the saga worker did not stop in time; exiting now',
        abandoned: 1,
      })
      // The instance was not given back: its lease runs out for another worker to resume it.
      const left = await getSaga(db, id)
      expect(left?.status).toBe('running')
      expect(left?.steps[0]).toMatchObject({ name: 'stuck', status: 'pending' })
      expect(signals.listenerCount('SIGTERM')).toBe(0)
    } finally {
      await db.close()
      file.cleanup()
    }
  })
})

describe('breakwater saga worker: a signal while the start hangs', () => {
  it('bounds the wait by --drain-timeout-ms, then exits 1', async () => {
    // The module's top level never finishes (an app that connects at import to a server that
    // does not answer): the first signal must not leave the process waiting for it for ever.
    const dir = mkdtempSync(join(tmpdir(), 'breakwater-worker-hang-'))
    const file = join(dir, 'never-sagas.mjs')
    writeFileSync(
      file,
      'globalThis.__breakwaterHangingModule = true\nawait new Promise(() => {})\nexport const sagas = []\n',
    )
    const marker = globalThis as { __breakwaterHangingModule?: boolean }
    const clock = new ManualClock(Date.now())
    const signals = new EventEmitter()
    const exits: number[] = []
    let stdout = ''
    try {
      const running = sagaWorkerCommand(
        ['--module', file, '--db', `sqlite:${join(dir, 'none.db')}`, '--drain-timeout-ms', '5000'],
        {
          stdout: { write: (t: string) => (stdout += t) },
          stderr: { write: () => {} },
          env: {},
          signals,
          exit: (code) => exits.push(code),
          clock,
        },
      )
      await until(() => marker.__breakwaterHangingModule === true, 'the module to load')
      signals.emit('SIGTERM', 'SIGTERM')
      await flushJobs()
      await clock.advance(5_000)
      expect(await running).toBe(1)
      expect(exits).toEqual([1])
      expect(stdout).toContain('the saga worker did not stop in time; exiting now')
      expect(signals.listenerCount('SIGTERM')).toBe(0)
    } finally {
      delete marker.__breakwaterHangingModule
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
