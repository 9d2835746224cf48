// `breakwater proxy`'s drain. With the longest drainTimeoutMs the config takes, the command's
// own wait for the drain (drainTimeoutMs plus a margin) must stay a valid timer delay, so the
// proxy starts and drains instead of failing with INVALID_OPTION on the margin. With a short
// one, the requests it cuts must show on the exit line.

import { EventEmitter } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { proxyCommand } from '../../src/cli/proxy.js'
import { maxTimerDelayMs } from '../../src/core/clock.js'
import type { SignalTarget } from '../../src/process/index.js'
import { captureLog, eventually, http, startNamedUpstream } from '../proxy/runtime/helpers.js'

/** Runs `breakwater proxy` on an ambassador config for `url` until it has started. */
async function startCommand(url: string, drainTimeoutMs: number) {
  const file = join(mkdtempSync(join(tmpdir(), 'bw-proxy-drain-')), 'proxy.yaml')
  writeFileSync(
    file,
    `services: { a: { endpoints: [${url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: ${drainTimeoutMs}\n`,
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
  const started = out.lines().find((l) => l.msg === 'proxy started') as {
    listeners: { port: number }[]
  }
  return {
    run,
    out,
    port: started.listeners[0]?.port ?? 0,
    stop: () => signals.emit('SIGTERM', 'SIGTERM'),
  }
}

describe('breakwater proxy with drainTimeoutMs at its maximum', () => {
  it('starts, and drains on SIGTERM with exit 0', async () => {
    const { run, stop } = await startCommand('http://127.0.0.1:9', maxTimerDelayMs)
    stop()
    expect(await run).toBe(0)
  })
})

describe('breakwater proxy whose drain runs out of time', () => {
  it('says so on the exit line, at warn, with how many requests it cut; exit 0', async () => {
    // A short drainTimeoutMs (real time: the command takes no clock) and a request held
    // upstream past it: the proxy cuts it, as documented, and must not report a clean drain.
    const upstream = await startNamedUpstream('a', { hold: () => true })
    try {
      const { run, out, port, stop } = await startCommand(upstream.url, 200)
      const held = http(port, '/a/x').then(
        () => 'answered',
        () => 'cut',
      )
      await eventually(() => upstream.seen.length === 1, 'the request upstream')
      stop()
      expect(await run).toBe(0)
      expect(await held).toBe('cut')
      expect(out.lines().find((l) => l.msg === 'access')).toMatchObject({
        status: 503,
        error: 'DRAIN_TIMEOUT',
      })
      expect(out.lines().at(-1)).toMatchObject({
        msg: 'proxy exited',
        level: 'warn',
        reason: 'signal',
        drain: 'cut',
        cut: 1,
      })
    } finally {
      upstream.release()
      await upstream.close()
    }
  })
})
