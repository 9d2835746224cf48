// How long the primary waits for a worker's answer to a reload, and what the reload's answer
// says about each worker. A worker's reload is bounded by the new config's startTimeoutMs (its
// own PROXY_START_TIMEOUT refusal), so the primary waits that long plus a margin before it
// counts the worker as not answering; it used to give every command 10 s, so a worker whose
// reload was legitimately still within its bound (a store slow to open) was replaced, and the
// reload reported as not applied by it, before the worker's own limit was reached. Commands
// that start nothing keep the short bound. The workers are in-memory fakes of cluster's
// Worker, on a ManualClock.

import type { Worker } from 'node:cluster'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { createClusterBackend, reloadAnswerMarginMs } from '../../../src/proxy/admin/cluster.js'
import type { AdminServer } from '../../../src/proxy/admin/server.js'
import { ConfigInvalidError } from '../../../src/proxy/config/errors.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog, http } from '../runtime/helpers.js'
import { adminApiOver, settle, twoWorkersYaml } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

// The file in force: the default startTimeoutMs (60 s), an admin API.
const inForce = `${twoWorkersYaml}admin: { host: 127.0.0.1, port: 0, token: { env: T } }\n`
// The file after an edit: its own bound, 20 s.
const edited = `${inForce}startTimeoutMs: 20000\n`
const token = 'admin-token-0123456789abcdef'

// The worker's refusal when its own bound ran out, as serveWorkerCommands sends it.
const startBoundProblem = {
  path: '(apply)',
  message:
    'expected a config that can be applied, got startTimeoutMs (20000 ms) passed while waiting for idempotency.url: opening postgres://app@db:5432/app and running its migrations',
}

function primary(next = edited) {
  const clock = new ManualClock(0)
  const backend = createClusterBackend({
    config: parseProxyConfig(inForce, 'file'),
    configText: inForce,
    loadConfig: async () => ({ config: parseProxyConfig(next, 'file'), text: next }),
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock,
  })
  const up = (worker: FakeWorker): FakeWorker => {
    backend.attach(worker as unknown as Worker)
    worker.start()
    return worker
  }
  return { backend, clock, up }
}

/** The request the fake worker was last sent for `op` (to answer it by hand). */
function requestOf(worker: FakeWorker, op: string): { id: number } {
  const found = worker.sent.findLast(
    (m) => (m as { command?: { op?: string } }).command?.op === op,
  ) as { id: number } | undefined
  if (found === undefined) throw new Error(`worker ${worker.id} was sent no ${op}`)
  return found
}

function answer(worker: FakeWorker, op: string, error?: object): void {
  const { id } = requestOf(worker, op)
  worker.emit(
    'message',
    error === undefined
      ? { bw: 'reply', id, ok: true, value: null }
      : { bw: 'reply', id, ok: false, error },
  )
}

/** Answers the worker's reload as one whose own start bound ran out. */
function refuseAtStartBound(worker: FakeWorker): void {
  answer(worker, 'reload', {
    code: 'CONFIG_INVALID',
    message: 'invalid',
    problems: [startBoundProblem],
  })
}

let admin: AdminServer | undefined
afterEach(async () => {
  await admin?.close()
  admin = undefined
})

describe("cluster backend: the wait for a reload's answer", () => {
  it("waits for a worker within the new config's startTimeoutMs, past the 10 s of other commands", async () => {
    const { backend, clock, up } = primary()
    const quick = up(new FakeWorker(1, { answering: true }))
    const slow = up(new FakeWorker(2))
    const reloading = backend.reload()
    await settle()
    // A store slow to open: the worker is still within its own 20 s when 10 s have passed.
    await clock.advance(19_000)
    answer(slow, 'reload')
    expect(await reloading).toBeUndefined()
    expect(slow.signals).toEqual([])
    expect(quick.signals).toEqual([])
    expect(backend.readyWorkers()).toBe(2)
  })

  it('counts a worker as not answering, and replaces it, once that bound and the margin are up', async () => {
    const { backend, clock, up } = primary()
    up(new FakeWorker(1, { answering: true }))
    const hung = up(new FakeWorker(2))
    const reloading = backend.reloadByWorker().catch((e: unknown) => e)
    await settle()
    await clock.advance(20_000 + reloadAnswerMarginMs - 1)
    expect(hung.signals).toEqual([])
    await clock.advance(1)
    const error = (await reloading) as PartiallyAppliedError
    expect(error).toBeInstanceOf(PartiallyAppliedError)
    expect(error.workers).toEqual([
      { pid: 1001, outcome: 'applied', replaced: false },
      {
        pid: 1002,
        outcome: 'no-answer',
        reason: `worker 1002 did not answer reload in ${20_000 + reloadAnswerMarginMs} ms`,
        replaced: true,
      },
    ])
    expect(hung.signals).toEqual(['SIGTERM'])
  })

  it("follows the config in force's bound for a worker that came up behind a reload", async () => {
    // The file in force after the reload has startTimeoutMs 20 s: a worker that started on the
    // older text reloads it, and is waited for that long plus the margin.
    const { backend, clock, up } = primary()
    up(new FakeWorker(1, { answering: true }))
    up(new FakeWorker(2, { answering: true }))
    expect(await backend.reload()).toBeUndefined()
    const behind = new FakeWorker(3)
    backend.attach(behind as unknown as Worker)
    behind.emit('message', { bw: 'ready', generation: 0 })
    await settle()
    await clock.advance(19_000)
    expect(behind.signals).toEqual([])
    answer(behind, 'reload')
    await settle()
    expect(backend.readyWorkers()).toBe(3)
  })

  it('keeps the short bound for commands that start nothing', async () => {
    const { backend, clock, up } = primary()
    up(new FakeWorker(1, { answering: true }))
    up(new FakeWorker(2))
    const asking = backend.services().catch((e: unknown) => e)
    await settle()
    await clock.advance(10_000)
    expect(JSON.stringify(await asking)).toContain('did not answer services in 10000 ms')
  })

  it('replaces a worker that did not answer also when no worker applied the reload', async () => {
    // It may still apply the new text: the primary keeps the old one in force, so the worker is
    // replaced by one started from it.
    const { backend, clock, up } = primary()
    const refusing = up(new FakeWorker(1))
    const hung = up(new FakeWorker(2))
    const reloading = backend.reloadByWorker()
    await settle()
    refuseAtStartBound(refusing)
    await clock.advance(20_000 + reloadAnswerMarginMs)
    const report = await reloading
    expect(report.refused).toBeInstanceOf(ConfigInvalidError)
    expect(report.workers).toEqual([
      {
        pid: 1001,
        outcome: 'refused',
        reason: `${startBoundProblem.path}: ${startBoundProblem.message}`,
        replaced: false,
      },
      {
        pid: 1002,
        outcome: 'no-answer',
        reason: `worker 1002 did not answer reload in ${20_000 + reloadAnswerMarginMs} ms`,
        replaced: true,
      },
    ])
    expect(refusing.signals).toEqual([])
    expect(hung.signals).toEqual(['SIGTERM'])
    expect(await backend.config()).toEqual(parseProxyConfig(inForce, 'file'))
  })
})

describe('POST /admin/reload in the multi-process mode', () => {
  async function adminOver(backend: ReturnType<typeof primary>['backend']): Promise<number> {
    admin = await adminApiOver(backend, token)
    return admin.address().port
  }
  const post = (port: number) =>
    http(port, '/admin/reload', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    })

  it('says per worker whether it applied, was refused (with its reason), or did not answer', async () => {
    const { backend, clock, up } = primary()
    const applying = up(new FakeWorker(1))
    const refusing = up(new FakeWorker(2))
    up(new FakeWorker(3))
    const port = await adminOver(backend)
    const answered = post(port)
    // The request reaches the backend: each worker has been sent the reload.
    for (let i = 0; i < 100 && refusing.commands().length === 0; i++) await settle()
    answer(applying, 'reload')
    refuseAtStartBound(refusing)
    await clock.advance(20_000 + reloadAnswerMarginMs)
    const res = await answered
    expect(res.status).toBe(502)
    expect(res.json()).toMatchObject({
      code: 'PARTIALLY_APPLIED',
      appliedBy: [1001],
      workers: [
        { pid: 1001, outcome: 'applied', replaced: false },
        {
          pid: 1002,
          outcome: 'refused',
          reason: `(apply): ${startBoundProblem.message}`,
          replaced: true,
        },
        {
          pid: 1003,
          outcome: 'no-answer',
          reason: `worker 1003 did not answer reload in ${20_000 + reloadAnswerMarginMs} ms`,
          replaced: true,
        },
      ],
    })
  })

  it('lists every worker as applied on 200, and every refusal on 422', async () => {
    const { backend, up } = primary()
    up(new FakeWorker(1, { answering: true }))
    up(new FakeWorker(2, { answering: true }))
    const port = await adminOver(backend)
    const ok = await post(port)
    expect(ok.status).toBe(200)
    expect(ok.json()).toEqual({
      reloaded: true,
      workers: [
        { pid: 1001, outcome: 'applied', replaced: false },
        { pid: 1002, outcome: 'applied', replaced: false },
      ],
    })

    const refusing = primary()
    const refuse = () => 'cannot read tls file'
    refusing.up(new FakeWorker(1, { answering: true, refusing: refuse }))
    refusing.up(new FakeWorker(2, { answering: true, refusing: refuse }))
    await admin?.close()
    const refusedPort = await adminOver(refusing.backend)
    const refused = await post(refusedPort)
    expect(refused.status).toBe(422)
    expect(refused.json()).toMatchObject({
      code: 'CONFIG_INVALID',
      workers: [
        { pid: 1001, outcome: 'refused', reason: 'cannot read tls file', replaced: false },
        { pid: 1002, outcome: 'refused', reason: 'cannot read tls file', replaced: false },
      ],
    })
  })
})
