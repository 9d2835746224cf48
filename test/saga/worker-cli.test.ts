// `breakwater saga worker --module <file>` as a real process on real SQLite and PostgreSQL:
// it runs the sagas the module exports, serves /metrics, logs JSON, and on SIGTERM lets the
// step in hand finish, gives the instance back and exits 0. Bad arguments and modules exit 2.

import { EventEmitter } from 'node:events'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { migrateIdempotency } from '../../src/idempotency/index.js'
import { createSagaWorker, getSaga, migrateSagas, startSaga } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { declined } from '../fixtures/saga/cli-failing.js'
import { greeting, slow } from '../fixtures/saga/cli-sagas.js'
import { runCli, spawnCliFromSources } from '../process/cli-process.js'
import { createTestSqlite } from '../support/sqlite.js'
import { until } from '../support/until.js'
import { dbTargets, type TestDb } from './databases.js'

const fixture = (name: string) =>
  fileURLToPath(new URL(`../fixtures/saga/${name}`, import.meta.url))
const sagasModule = fixture('cli-sagas.ts')

/** One sample of a Prometheus text exposition. */
function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? undefined : Number(line.split(' ')[1])
}

describe('saga worker arguments', () => {
  async function run(args: string[]) {
    let out = ''
    let err = ''
    const code = await sagaCommand(['worker', ...args], {
      stdout: { write: (t: string) => (out += t) },
      stderr: { write: (t: string) => (err += t) },
    })
    return { code, out, err }
  }

  it.each([
    [[], '--module <file> is required'],
    [['--module'], '--module needs a value'],
    [['--module', sagasModule, '--concurrency', '0'], '--concurrency must be an integer from 1'],
    [['--module', sagasModule, '--log-level', 'loud'], '--log-level must be one of'],
    [['--module', sagasModule, '--db', 'mysql://x/y'], '--db: expected sqlite:<file> or postgres'],
    [['--module', sagasModule, 'extra'], 'unexpected argument "extra"'],
    [['--module', sagasModule, '--verbose'], 'unknown option "--verbose"'],
    [['--module', fixture('nowhere.ts')], '--module: cannot load'],
    [['--module', fixture('')], 'saga/: not a file'],
    [['--module', fixture('cli-no-sagas.ts')], 'must export `sagas`, a non-empty array'],
  ])('%j -> exit 2 with a message and the usage', async (args, message) => {
    const { code, err } = await run(args)
    expect(code).toBe(2)
    expect(err).toContain(message)
    expect(err).toContain('usage: breakwater saga worker')
  })

  it('a module that throws while it loads exits 1, naming it, without the usage', async () => {
    const { code, out, err } = await run(['--module', fixture('cli-throws.ts')])
    expect(code).toBe(1)
    expect(err).toContain(`--module: ${fixture('cli-throws.ts')} failed while loading`)
    expect(err).toContain('cannot reach the config at postgres://app:***@config.internal/app')
    expect(err).not.toContain('hunter2')
    expect(err).not.toContain('usage:')
    // Said twice on purpose, as every start failure of the relay and the saga worker is (a
    // database that does not open, one not migrated): once in the JSON log (stdout, for what
    // collects it) and once as plain text on stderr (for whoever ran it), each once, both
    // without the password.
    const message = err.replace(/^breakwater saga worker: /, '').trimEnd()
    expect(err.trimEnd().split('\n')).toHaveLength(1)
    expect(
      out
        .trimEnd()
        .split('\n')
        .map((line) => JSON.parse(line)),
    ).toEqual([expect.objectContaining({ level: 'error', msg: message })])
  })

  it('--help prints the usage', async () => {
    const { code, out } = await run(['--help'])
    expect(code).toBe(0)
    expect(out).toContain('--module <file>')
  })

  it('a definition the worker refuses exits 2 naming it; a default-exported array is taken', async () => {
    const file = createTestSqlite('saga-worker-modules')
    try {
      const db = await openDatabase(file.url)
      await migrateSagas(db)
      await db.close()
      const bad = await run(['--module', fixture('cli-bad-sagas.ts'), '--db', file.url])
      expect(bad.code).toBe(2)
      expect(bad.err).toContain('breakwater saga worker: --module: ')
      expect(bad.err).toContain('sagas[0]')
      // The default export is loaded: the worker starts (and is stopped by a signal).
      const signals = new EventEmitter()
      let out = ''
      const running = sagaWorkerCommand(
        ['--module', fixture('cli-default-export.ts'), '--db', file.url],
        {
          stdout: { write: (t: string) => (out += t) },
          stderr: { write: () => {} },
          signals,
        },
      )
      await until(() => out.includes('saga worker started'), 'the worker to start')
      expect(out).toContain('cli-greeting@1')
      signals.emit('SIGTERM', 'SIGTERM')
      expect(await running).toBe(0)
    } finally {
      file.cleanup()
    }
  })

  it('logs a step failure with the error as every breakwater process logs one: { type, message, code, status }', async () => {
    // The worker's events carry the persisted ErrorInfo ({ name, ... }); logged as they were,
    // saga workers wrote error.name where the relay, the proxy and createJsonLogger write
    // error.type, so a log query or alert on error.type never matched a saga failure.
    const file = createTestSqlite('saga-worker-error-shape')
    try {
      const db = await openDatabase(file.url)
      await migrateSagas(db)
      const signals = new EventEmitter()
      let out = ''
      const running = sagaWorkerCommand(
        ['--module', fixture('cli-failing.ts'), '--db', file.url, '--poll-interval-ms', '20'],
        { stdout: { write: (t: string) => (out += t) }, stderr: { write: () => {} }, signals },
      )
      const lines = () =>
        out
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      await until(() => out.includes('saga worker started'), 'the worker to start')
      const { id } = await startSaga(db, declined, {})
      await until(
        () => lines().some((l) => l.msg === 'saga compensated' && l.sagaId === id),
        'the saga to fail and be compensated',
      )
      const failed = lines().find((l) => l.msg === 'saga step-failed')
      expect(failed?.error).toEqual({
        type: 'ChargeDeclinedError',
        message: 'card "4242" declined',
        code: 'CARD_DECLINED',
        status: 402,
      })
      signals.emit('SIGTERM', 'SIGTERM')
      expect(await running).toBe(0)
      await db.close()
    } finally {
      file.cleanup()
    }
  })

  it('an unmigrated database exits 1 with a hint', async () => {
    const file = createTestSqlite('saga-worker-unmigrated')
    try {
      const db = await openDatabase(file.url)
      await migrateIdempotency(db)
      await db.close()
      const { code, err } = await run(['--module', sagasModule, '--db', file.url])
      expect(code).toBe(1)
      expect(err).toContain('lacks the saga migrations')
      expect(err).toContain('run `breakwater migrate --db')
      // A bad module is reported first, whatever state the database is in.
      const bad = await run(['--module', fixture('cli-bad-sagas.ts'), '--db', file.url])
      expect(bad.code).toBe(2)
      expect(bad.err).toContain('sagas[0]')
    } finally {
      file.cleanup()
    }
  })
})

describe.each(dbTargets)('saga worker process on $dialect', (target) => {
  let t: TestDb

  beforeAll(async () => {
    t = await target.open('saga_worker_cli')
  })
  afterAll(async () => {
    await t?.close()
  })

  /** `breakwater saga worker` on the test database, polling fast, logging every step. */
  const spawnWorker = (args: string[], env: Record<string, string>) =>
    spawnCliFromSources(
      [
        ...['saga', 'worker', '--module', sagasModule, '--db', t.url],
        ...['--poll-interval-ms', '20', '--log-level', 'debug', ...args],
      ],
      env,
    )

  it('runs the module’s sagas, serves metrics, and on SIGTERM finishes the step in hand, gives the instance back and exits 0', async () => {
    const worker = spawnWorker(['--metrics-port', '0'], { SAGA_SLOW_MS: '600' })
    try {
      const started = await worker.waitForLine(
        (l) => l.msg === 'saga worker started',
        'the worker to start',
        30_000,
      )
      expect(started).toMatchObject({
        service: 'breakwater-saga-worker',
        dialect: target.dialect,
        sagas: ['cli-greeting@1', 'cli-slow@1'],
      })

      const ids: string[] = []
      for (const name of ['ada', 'grace', 'edsger']) {
        ids.push((await startSaga(t.db, greeting, { name })).id)
      }
      await until(async () => {
        for (const id of ids) if ((await getSaga(t.db, id))?.status !== 'completed') return false
        return true
      }, 'the worker to complete the three sagas')
      expect((await getSaga(t.db, ids[0]!))?.context).toMatchObject({
        greeting: 'hello ada',
        shout: 'HELLO ADA',
      })
      const metrics = await (await fetch(started.metrics as string)).text()
      expect(sample(metrics, 'breakwater_saga_worker_completed_total')).toBe(3)
      expect(sample(metrics, 'breakwater_saga_worker_steps_completed_total')).toBe(6)
      expect(sample(metrics, 'breakwater_saga_worker_parked_total')).toBe(0)
      expect(metrics).toContain('breakwater_saga_worker_info{')
      const completed = worker.lines.filter((l) => l.msg === 'saga completed')
      expect(completed.map((l) => l.sagaId).sort()).toEqual([...ids].sort())

      // A slow step is running when SIGTERM arrives: it finishes and is recorded, the
      // instance is given back, and the process exits 0.
      const { id: slowId } = await startSaga(t.db, slow, {})
      await worker.waitForLine(
        (l) => l.msg === 'saga step-started' && l.sagaId === slowId,
        'the slow step to start',
      )
      worker.child.kill('SIGTERM')
      const exit = await worker.exited
      expect(exit.code, worker.stderr()).toBe(0)
      const handedBack = await getSaga(t.db, slowId)
      expect(handedBack?.status).toBe('running')
      expect(handedBack?.steps[0]).toMatchObject({ name: 'nap', status: 'completed' })
      expect(handedBack?.leaseOwner).toBeUndefined()
      expect(worker.lines.map((l) => l.msg)).toContain('stopping: finishing the steps in hand')
      expect(worker.lines.at(-1)).toMatchObject({
        msg: 'saga worker stopped',
        completed: 3,
        state: 'stopped',
      })
      for (const line of worker.lines) {
        expect(Object.keys(line).slice(0, 3)).toEqual(['level', 'time', 'msg'])
      }

      // Another worker continues where it stopped, without repeating the nap.
      const next = createSagaWorker({ db: t.db, sagas: [greeting, slow] })
      expect(await next.poll()).toBe(1)
      expect((await getSaga(t.db, slowId))?.status).toBe('completed')
    } finally {
      worker.kill()
    }
  }, 60_000)

  it('exits 1 at once when the step in hand outlasts --drain-timeout-ms, leaving it to another worker', async () => {
    // The nap is far longer than the drain allows: the process must not wait for it.
    const worker = spawnWorker(['--drain-timeout-ms', '200'], { SAGA_SLOW_MS: '600000' })
    try {
      await worker.waitForLine(
        (l) => l.msg === 'saga worker started',
        'the worker to start',
        30_000,
      )
      const { id } = await startSaga(t.db, slow, {})
      await worker.waitForLine(
        (l) => l.msg === 'saga step-started' && l.sagaId === id,
        'the slow step to start',
      )
      worker.child.kill('SIGTERM')
      const exit = await worker.exited
      expect(exit.code, worker.stderr()).toBe(1)
      expect(worker.lines.map((l) => l.msg)).toContain(
        'the saga worker did not stop in time; exiting now',
      )
      // The nap never finished here: the instance waits for its lease to run out.
      const left = await getSaga(t.db, id)
      expect(left?.status).toBe('running')
      expect(left?.steps[0]).toMatchObject({ name: 'nap', status: 'pending' })
    } finally {
      worker.kill()
    }
  }, 60_000)

  it('runs with the database from BREAKWATER_DB_URL when --db is not given', async () => {
    const migrated = await runCli(['migrate', '--db', t.url])
    expect(migrated.code, migrated.stderr).toBe(0)
    const worker = spawnCliFromSources(['saga', 'worker', '--module', sagasModule], {
      BREAKWATER_DB_URL: t.url,
    })
    try {
      await worker.waitForLine(
        (l) => l.msg === 'saga worker started',
        'the worker to start',
        30_000,
      )
      const { id } = await startSaga(t.db, greeting, { name: 'barbara' })
      await until(
        async () => (await getSaga(t.db, id))?.status === 'completed',
        'the saga to complete',
      )
      worker.child.kill('SIGTERM')
      expect((await worker.exited).code).toBe(0)
    } finally {
      worker.kill()
    }
  }, 60_000)
})
