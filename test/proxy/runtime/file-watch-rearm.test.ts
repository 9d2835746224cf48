// The single-process proxy's config file watch survives its folder being removed and created
// again (a volume remounted, a deploy tool replacing the folder): the watch is armed again after
// a delay (timed by the injected clock) and the file read then, so the new config is applied.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { ManualClock } from '../../../src/testing/index.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: RunningProxy | undefined
let parent: string

beforeEach(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
  parent = mkdtempSync(join(tmpdir(), 'bw-proxy-rearm-'))
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await legacy.close()
  await modern.close()
  rmSync(parent, { recursive: true, force: true })
})

const yaml = (upstream: NamedUpstream): string =>
  `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`

async function serviceOf(port: number): Promise<string> {
  const res = await http(port, '/a/x')
  expect(res.status).toBe(200)
  return res.json<{ service: string }>().service
}

describe('config file watch of the runtime', () => {
  it('watches again after its folder was removed and created again', async () => {
    const dir = join(parent, 'config')
    mkdirSync(dir)
    const file = join(dir, 'proxy.yaml')
    writeFileSync(file, yaml(legacy))
    const log = captureLog()
    const clock = new ManualClock(Date.now())
    proxy = await startProxy({
      config: { file },
      logger: createJsonLogger({ output: log, clock }),
      clock,
      watchDebounceMs: 0,
    })
    const port = proxy.address('out').port
    expect(await serviceOf(port)).toBe('legacy')
    rmSync(dir, { recursive: true })
    await eventually(
      () => log.lines().some((l) => l.msg === 'config file watch failed'),
      'the watch to see its folder go',
    )
    mkdirSync(dir)
    writeFileSync(file, yaml(modern))
    await clock.advance(1_000)
    await eventually(
      () => log.lines().some((l) => l.msg === 'config reloaded'),
      'the reload of the file in the new folder',
    )
    expect(await serviceOf(port)).toBe('modern')
  })
})
