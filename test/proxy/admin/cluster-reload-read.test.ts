// The multi-process primary reads and validates the config file before it asks any worker to
// reload. One process bounds that read by the startTimeoutMs in force (reload-timeout.test.ts);
// the primary did not: a file that never yields its text (a FIFO nobody writes, a hung network
// mount) held its reload queue for ever, and with it every later reload (SIGHUP, file change,
// POST /admin/reload) and the catching up of any worker that came up behind a reload. The read
// is real (a FIFO on disk); the workers are in-memory fakes, on a ManualClock.

import { execFileSync } from 'node:child_process'
import type { Worker } from 'node:cluster'
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { createMetricsRegistry } from '../../../src/observability/metrics.js'
import { createClusterBackend } from '../../../src/proxy/admin/cluster.js'
import { ConfigInvalidError } from '../../../src/proxy/config/errors.js'
import { parseProxyConfig } from '../../../src/proxy/config/load.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog } from '../runtime/helpers.js'
import { settle, twoWorkersYaml } from './cluster-support.js'
import { FakeWorker } from './fake-worker.js'

const inForce = `${twoWorkersYaml}startTimeoutMs: 5000\n`
const edited = `${inForce}drainTimeoutMs: 4321\n`

let dir: string
let fifo: string
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bw-cluster-read-'))
  fifo = join(dir, 'breakwater.yaml')
  execFileSync('mkfifo', [fifo])
})
afterEach(() => {
  // A reader still blocked opening the FIFO holds a libuv thread: a writer that closes at
  // once lets it read an empty file and end.
  try {
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK))
  } catch {
    // No reader left.
  }
  rmSync(dir, { recursive: true, force: true })
})

describe('cluster backend: reading the file for a reload', () => {
  it('is bounded by the startTimeoutMs in force: refused past it, and the reloads behind it go on', async () => {
    const clock = new ManualClock(0)
    let file = fifo
    const backend = createClusterBackend({
      config: parseProxyConfig(inForce, 'file'),
      configText: inForce,
      loadConfig: async () => {
        const text = await readFile(file, 'utf8')
        return { config: parseProxyConfig(text, file), text }
      },
      logger: createJsonLogger({ output: captureLog(), level: 'debug' }),
      metrics: createMetricsRegistry(),
      clock,
    })
    for (const worker of [
      new FakeWorker(1, { answering: true }),
      new FakeWorker(2, { answering: true }),
    ]) {
      backend.attach(worker as unknown as Worker)
      worker.start()
    }
    let settled = false
    const hung = backend.reload().finally(() => {
      settled = true
    })
    await settle()
    await clock.advance(4_999)
    await settle()
    expect(settled).toBe(false)
    await clock.advance(1)
    for (let i = 0; i < 5 && !settled; i++) await settle()
    expect(settled).toBe(true)
    const refused = await hung
    expect(refused).toBeInstanceOf(ConfigInvalidError)
    expect(refused?.message).toContain(
      'startTimeoutMs (5000 ms) passed while waiting for config: reading the config file',
    )
    expect((await backend.config()).drainTimeoutMs).not.toBe(4321)

    // The next reload is not held behind the one given up on.
    file = join(dir, 'edited.yaml')
    writeFileSync(file, edited)
    expect(await backend.reload()).toBeUndefined()
    expect((await backend.config()).drainTimeoutMs).toBe(4321)
  })
})
