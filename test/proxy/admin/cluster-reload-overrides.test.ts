// Route switches in the multi-process mode: the primary remembers them so that a restarted
// worker is given them again, and after a reload must remember exactly those the workers kept
// (one rule for both, see inbound/route-overrides.ts): a switch stays when the reload left the
// route's targets and the services it names alone, and goes when the route was removed, its
// targets edited or a service it names removed. The primary, which owns that record, logs the
// decision once per reload; each worker, which only repeats it, logs it at debug (it used to be
// info and warn in every worker and nothing in the primary: N copies of each line). The workers
// are in-memory fakes of cluster's Worker that accept every command, or the real
// serveWorkerCommands over a real runtime on a fake process channel.

import { EventEmitter } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { serveWorkerCommands } from '../../../src/proxy/admin/cluster.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { type ProxyInternals, startProxyRuntime } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { asWorker, reloadingBackend, settle } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

const before = `services:
  legacy: { endpoints: ['http://127.0.0.1:1'], timeouts: { overallMs: 30000 } }
  modern: { endpoints: ['http://127.0.0.1:2'] }
  spare: { endpoints: ['http://127.0.0.1:3'] }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: kept, match: { prefix: /kept }, targets: [{ service: legacy }] }
      - { name: edited, match: { prefix: /edited }, targets: [{ service: legacy }] }
      - { name: removed, match: { prefix: /removed }, targets: [{ service: legacy }] }
      - { name: spared, match: { prefix: /spared }, targets: [{ service: legacy }] }
workers: 2
`
// legacy's timeout edited (unrelated to every switch), edited's targets changed, removed gone,
// spare (named by spared's switch at weight 0) gone.
const after = before
  .replace('overallMs: 30000', 'overallMs: 5000')
  .replace(
    '{ name: edited, match: { prefix: /edited }, targets: [{ service: legacy }] }',
    '{ name: edited, match: { prefix: /edited }, targets: [{ service: modern }] }',
  )
  .replace(
    '      - { name: removed, match: { prefix: /removed }, targets: [{ service: legacy }] }\n',
    '',
  )
  .replace("  spare: { endpoints: ['http://127.0.0.1:3'] }\n", '')

const toModern = [{ service: 'modern', weight: 1 }]
const toModernAndSpare = [
  { service: 'modern', weight: 1 },
  { service: 'spare', weight: 0 },
]

/** The lines about switches a reload kept or dropped, without their time and pid. */
function switchLines(log: ReturnType<typeof captureLog>): Record<string, unknown>[] {
  return log
    .lines()
    .filter((l) => String(l.msg).startsWith('route override'))
    .map(({ time: _time, pid: _pid, ...line }) => line)
}

/** What the switches of `before` become on `after`, as one process logs each. */
const decided = (level: { kept: string; dropped: string }) => [
  { level: level.kept, msg: 'route override kept by reload', route: 'kept', targets: toModern },
  {
    level: level.dropped,
    msg: 'route override dropped by reload',
    route: 'edited',
    reason: 'targets changed',
  },
  {
    level: level.dropped,
    msg: 'route override dropped by reload',
    route: 'removed',
    reason: 'route removed',
  },
  {
    level: level.dropped,
    msg: 'route override dropped by reload',
    route: 'spared',
    reason: 'service removed',
    services: ['spare'],
  },
]

describe('cluster backend: route switches across a reload', () => {
  it('gives a worker restarted after a reload exactly the switches the reload kept', async () => {
    const { backend, up } = reloadingBackend(
      { config: parseProxyConfig(before, 'before'), text: before },
      { config: parseProxyConfig(after, 'after'), text: after },
    )
    const first = up(1)
    for (const route of ['kept', 'edited', 'removed']) await backend.switchRoute(route, toModern)
    await backend.switchRoute('spared', toModernAndSpare)
    expect(await backend.reload()).toBeUndefined()
    backend.detach(asWorker(first))
    // The replacement of a crashed worker.
    const next = up(2)
    expect(next.commands()).toEqual([{ op: 'switchRoute', route: 'kept', targets: toModern }])
  })

  it('still forgets a switch that was rolled back before the reload', async () => {
    const same = { config: parseProxyConfig(before, 'before'), text: before }
    const { backend, up } = reloadingBackend(same, same)
    const first = up(1)
    await backend.switchRoute('kept', [{ service: 'modern', weight: 1 }])
    await backend.resetRoute('kept')
    expect(await backend.reload()).toBeUndefined()
    backend.detach(asWorker(first))
    const next = up(2)
    expect(next.commands()).toEqual([])
  })
})

describe('the log of a reload that kept or dropped route switches, in the multi-process mode', () => {
  it('is written once, by the primary, with the reasons', async () => {
    const { backend, up, log } = reloadingBackend(
      { config: parseProxyConfig(before, 'before'), text: before },
      { config: parseProxyConfig(after, 'after'), text: after },
    )
    up(1)
    up(2)
    for (const route of ['kept', 'edited', 'removed']) await backend.switchRoute(route, toModern)
    await backend.switchRoute('spared', toModernAndSpare)
    expect(await backend.reload()).toBeUndefined()
    expect(switchLines(log)).toEqual(decided({ kept: 'info', dropped: 'warn' }))
  })

  it('is not written when no worker applied the reload (every switch stands)', async () => {
    const { backend, log } = reloadingBackend(
      { config: parseProxyConfig(before, 'before'), text: before },
      { config: parseProxyConfig(after, 'after'), text: after },
    )
    const worker = new FakeWorker(1, {
      answering: true,
      refusing: (command) => (command.op === 'reload' ? 'cannot bind in' : undefined),
    })
    backend.attach(asWorker(worker))
    worker.start()
    await backend.switchRoute('edited', toModern)
    expect(await backend.reload()).toBeDefined()
    expect(switchLines(log)).toEqual([])
  })

  let runtime: ProxyInternals | undefined
  afterEach(async () => {
    await runtime?.close(0)
    runtime = undefined
  })

  it('is written at debug by each worker, which only repeats what the primary decided', async () => {
    const log = captureLog()
    runtime = await startProxyRuntime({
      config: before,
      watch: false,
      admin: false,
      clock: new ManualClock(),
      logger: createJsonLogger({ output: log, level: 'debug' }),
    })
    const sent: { bw?: string; id?: number; ok?: boolean }[] = []
    const channel = Object.assign(new EventEmitter(), {
      connected: true,
      send: (message: { bw?: string }) => {
        sent.push(message)
        return true
      },
    }) as unknown as NodeJS.Process & EventEmitter
    const stop = serveWorkerCommands(runtime, channel, () => {})
    let id = 0
    const ask = async (command: object): Promise<void> => {
      const asked = ++id
      channel.emit('message', { bw: 'request', id: asked, command })
      for (let i = 0; i < 1_000 && !sent.some((m) => m.id === asked); i++) await settle()
      expect(sent.find((m) => m.id === asked)).toMatchObject({ bw: 'reply', ok: true })
    }
    for (const route of ['kept', 'edited', 'removed'])
      await ask({ op: 'switchRoute', route, targets: toModern })
    await ask({ op: 'switchRoute', route: 'spared', targets: toModernAndSpare })
    await ask({ op: 'reload', text: after, generation: 1 })
    stop()
    expect(switchLines(log)).toEqual(decided({ kept: 'debug', dropped: 'debug' }))
  })
})
