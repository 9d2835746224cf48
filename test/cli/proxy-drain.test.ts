// `breakwater proxy` with the longest drainTimeoutMs the config takes: the command's own wait
// for the drain (drainTimeoutMs plus a margin) must stay a valid timer delay, so the proxy
// starts and drains instead of failing with INVALID_OPTION on the margin.

import { EventEmitter } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { maxTimerDelayMs } from '../../src/core/clock.js'
import type { SignalTarget } from '../../src/process/index.js'
import { captureLog, eventually } from '../proxy/runtime/helpers.js'

describe('breakwater proxy with drainTimeoutMs at its maximum', () => {
  it('starts, and drains on SIGTERM with exit 0', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'bw-proxy-drain-')), 'proxy.yaml')
    writeFileSync(
      file,
      `services: { a: { endpoints: [http://127.0.0.1:9] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: ${maxTimerDelayMs}\n`,
    )
    const signals = new EventEmitter()
    const out = captureLog()
    const run = proxyCommand(['--config', file], {
      stdout: out,
      signals: signals as unknown as SignalTarget,
    })
    await Promise.race([
      eventually(() => out.lines().some((l) => l.msg === 'proxy started'), 'the start'),
      run.then((code) => {
        throw new Error(`the command ended before the start, with ${code}`)
      }),
    ])
    signals.emit('SIGTERM', 'SIGTERM')
    expect(await run).toBe(0)
  })
})
