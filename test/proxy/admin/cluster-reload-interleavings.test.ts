// Reloads, workers starting, coming up, answering and crashing, in any order (fast-check picks
// the interleaving): once everything has settled, every live worker is up and runs the text of
// the last reload, as the primary says is in force. The workers are in-memory fakes of
// cluster's Worker that answer when the test says so, one request at a time in the order sent
// (as a real worker's runtime applies reloads).

import type { Worker } from 'node:cluster'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { PartiallyAppliedError } from '../../../src/proxy/admin/backend.js'
import { createClusterBackend } from '../../../src/proxy/admin/cluster.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { FakeWorker } from './fake-worker.js'

const yaml = (n: number) => `services:
  orders: { endpoints: ['http://127.0.0.1:1'] }
listeners:
  - { name: out, role: ambassador, host: 127.0.0.1, port: 0 }
workers: 2
# version ${n}
`

const settle = () => new Promise((resolve) => setImmediate(resolve))

type Action =
  | { kind: 'reload' }
  | { kind: 'fork' }
  | { kind: 'up'; worker: number }
  | { kind: 'answer'; worker: number }
  | { kind: 'crash'; worker: number }

const action: fc.Arbitrary<Action> = fc.oneof(
  fc.constant<Action>({ kind: 'reload' }),
  fc.constant<Action>({ kind: 'fork' }),
  fc.nat(5).map((worker): Action => ({ kind: 'up', worker })),
  fc.nat(5).map((worker): Action => ({ kind: 'answer', worker })),
  fc.nat(5).map((worker): Action => ({ kind: 'crash', worker })),
)

/** A started worker: the text it runs, and whether it reported ready. */
interface Model {
  readonly fake: FakeWorker
  text: string
  generation: number
  up: boolean
  dead: boolean
  answered: number
}

async function run(actions: readonly Action[]): Promise<void> {
  let loaded = 0
  const config = parseProxyConfig(yaml(0), 'test')
  const backend = createClusterBackend({
    config,
    configText: yaml(0),
    loadConfig: async () => {
      loaded++
      return { config: parseProxyConfig(yaml(loaded), 'test'), text: yaml(loaded) }
    },
    logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
    metrics: createMetricsRegistry(),
    clock: new ManualClock(0),
    commandTimeoutMs: 60_000,
  })
  backend.expect(1)
  const workers: Model[] = []
  let nextId = 1
  const fork = (): void => {
    const fake = new FakeWorker(nextId++)
    backend.attach(fake as unknown as Worker)
    fake.emit('message', { bw: 'starting' })
    const given = fake.sent.at(-1) as { text: string; generation: number }
    workers.push({
      fake,
      text: given.text,
      generation: given.generation,
      up: false,
      dead: false,
      answered: 0,
    })
  }
  const requests = (w: Model) =>
    w.fake.sent.filter((m) => (m as { bw: string }).bw === 'request') as {
      id: number
      command: { op: string; text?: string }
    }[]
  const answer = (w: Model): boolean => {
    const request = requests(w)[w.answered]
    if (w.dead || !w.up || request === undefined) return false
    w.answered++
    if (request.command.op === 'reload') w.text = request.command.text as string
    w.fake.emit('message', { bw: 'reply', id: request.id, ok: true, value: null })
    return true
  }
  // Each reload: its version when the primary adopted it, 0 when it refused it (no worker
  // applied it: the only ones asked crashed first).
  const reloads: Promise<number>[] = []
  fork()
  for (const a of actions) {
    const target =
      workers.length === 0
        ? undefined
        : workers[((a as { worker?: number }).worker ?? 0) % workers.length]
    switch (a.kind) {
      case 'reload': {
        // Reloads run one at a time in the order asked: the n-th reads version n.
        const n = reloads.length + 1
        reloads.push(
          backend.reload().then(
            (refused) => (refused === undefined ? n : 0),
            (error: unknown) => (error instanceof PartiallyAppliedError ? n : 0),
          ),
        )
        break
      }
      case 'fork':
        fork()
        break
      case 'up':
        if (target !== undefined && !target.up && !target.dead) {
          target.up = true
          target.fake.emit('message', { bw: 'ready', generation: target.generation })
        }
        break
      case 'answer':
        if (target !== undefined) answer(target)
        break
      case 'crash':
        if (target !== undefined && !target.dead && workers.filter((x) => !x.dead).length > 1) {
          target.dead = true
          target.fake.exit(null, 'SIGKILL')
          backend.detach(target.fake as unknown as Worker)
        }
        break
    }
    await settle()
  }
  // Everything settles: every live worker comes up and answers all it is sent.
  for (const w of workers)
    if (!w.dead && !w.up) {
      w.up = true
      w.fake.emit('message', { bw: 'ready', generation: w.generation })
    }
  for (let progress = true; progress; ) {
    progress = false
    await settle()
    for (const w of workers) while (answer(w)) progress = true
    await settle()
  }
  const inForce = Math.max(0, ...(await Promise.all(reloads)))
  expect(loaded).toBe(reloads.length)
  const live = workers.filter((w) => !w.dead)
  expect(backend.readyWorkers()).toBe(live.length)
  for (const w of live) expect(w.text).toBe(yaml(inForce))
}

describe('cluster backend: reloads and workers in any order', () => {
  it('ends with every live worker up and on the text of the last reload', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(action, { maxLength: 25 }), (actions) => run(actions)),
      { numRuns: 200 },
    )
  })
})
