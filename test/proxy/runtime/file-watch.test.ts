// The runtime's config file watch against the real file system: the ways config files get
// replaced in practice reload the proxy, which then routes by the new file.

import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { type Proxy as RunningProxy, startProxy } from '../../../src/proxy/runtime.js'
import { captureLog, eventually, http, type NamedUpstream, startNamedUpstream } from './helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
let proxy: RunningProxy | undefined
let dir: string

beforeEach(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
  dir = mkdtempSync(join(tmpdir(), 'bw-proxy-watch-'))
})

afterEach(async () => {
  await proxy?.close(0)
  proxy = undefined
  await legacy.close()
  await modern.close()
  rmSync(dir, { recursive: true, force: true })
})

function yaml(upstream: NamedUpstream): string {
  return `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\ndrainTimeoutMs: 1000\n`
}

async function serviceOf(port: number): Promise<string> {
  const res = await http(port, '/a/x')
  expect(res.status).toBe(200)
  return res.json<{ service: string }>().service
}

async function start(file: string): Promise<{ port: number; reloads: () => number }> {
  const log = captureLog()
  proxy = await startProxy({
    config: { file },
    logger: createJsonLogger({ output: log }),
    watchDebounceMs: 0,
  })
  return {
    port: proxy.address('out').port,
    reloads: () => log.lines().filter((l) => l.msg === 'config reloaded').length,
  }
}

describe('config file watch', () => {
  it('reloads a plain file replaced by rename', async () => {
    const file = join(dir, 'proxy.yaml')
    writeFileSync(file, yaml(legacy))
    const { port, reloads } = await start(file)
    expect(await serviceOf(port)).toBe('legacy')
    writeFileSync(join(dir, 'proxy.yaml.tmp'), yaml(modern))
    renameSync(join(dir, 'proxy.yaml.tmp'), file)
    await eventually(() => reloads() > 0, 'the reload')
    expect(await serviceOf(port)).toBe('modern')
  })

  it('reloads a file mounted from a ConfigMap when the kubelet swaps ..data', async () => {
    // The kubelet's atomic writer: proxy.yaml -> ..data/proxy.yaml, ..data -> ..<timestamp>.
    // An update writes a new timestamped folder, points ..data_tmp at it and renames it over
    // ..data: no event ever names proxy.yaml.
    const version = (name: string, text: string): void => {
      mkdirSync(join(dir, name))
      writeFileSync(join(dir, name, 'proxy.yaml'), text)
    }
    version('..2026_01_01_00_00_00.1', yaml(legacy))
    symlinkSync('..2026_01_01_00_00_00.1', join(dir, '..data'))
    symlinkSync(join('..data', 'proxy.yaml'), join(dir, 'proxy.yaml'))
    const { port, reloads } = await start(join(dir, 'proxy.yaml'))
    expect(await serviceOf(port)).toBe('legacy')
    version('..2026_01_02_00_00_00.2', yaml(modern))
    symlinkSync('..2026_01_02_00_00_00.2', join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    rmSync(join(dir, '..2026_01_01_00_00_00.1'), { recursive: true })
    await eventually(() => reloads() > 0, 'the reload')
    expect(await serviceOf(port)).toBe('modern')
  })

  it('reloads a file that changed while the proxy was starting', async () => {
    const file = join(dir, 'proxy.yaml')
    const admin = 'admin: { port: 0, token: { env: ADMIN_TOKEN } }\n'
    writeFileSync(file, yaml(legacy) + admin)
    // The admin API reads its token from env when it starts, after the file was read and the
    // listeners bound: the file is replaced right then, before the proxy is up.
    let replaced = false
    const env = new Proxy({} as Record<string, string | undefined>, {
      get(_target, key) {
        if (key !== 'ADMIN_TOKEN') return undefined
        if (!replaced) {
          replaced = true
          writeFileSync(join(dir, 'proxy.yaml.tmp'), yaml(modern) + admin)
          renameSync(join(dir, 'proxy.yaml.tmp'), file)
        }
        return 'secret'
      },
    })
    const log = captureLog()
    proxy = await startProxy({
      config: { file },
      logger: createJsonLogger({ output: log }),
      watchDebounceMs: 0,
      env,
    })
    expect(replaced).toBe(true)
    await eventually(
      () => log.lines().some((l) => l.msg === 'config reloaded'),
      'the reload of the file replaced during the start',
    )
    expect(await serviceOf(proxy.address('out').port)).toBe('modern')
  })

  it('does not reload when a ConfigMap update leaves the config file as it was', async () => {
    // A ConfigMap with two keys: an update of the other one swaps ..data too. Reloading the
    // same config is not free: it rebuilds every route table and handler.
    const version = (name: string, text: string, other: string): void => {
      mkdirSync(join(dir, name))
      writeFileSync(join(dir, name, 'proxy.yaml'), text)
      writeFileSync(join(dir, name, 'other.txt'), other)
    }
    const swap = (name: string): void => {
      symlinkSync(name, join(dir, '..data_tmp'))
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    }
    version('..v1', yaml(legacy), 'one')
    symlinkSync('..v1', join(dir, '..data'))
    symlinkSync(join('..data', 'proxy.yaml'), join(dir, 'proxy.yaml'))
    symlinkSync(join('..data', 'other.txt'), join(dir, 'other.txt'))
    const log = captureLog()
    proxy = await startProxy({
      config: { file: join(dir, 'proxy.yaml') },
      logger: createJsonLogger({ output: log, level: 'debug' }),
      watchDebounceMs: 0,
    })
    const seen = (msg: string) => log.lines().filter((l) => l.msg === msg).length
    version('..v2', yaml(legacy), 'two')
    swap('..v2')
    await eventually(
      () =>
        seen('config file unchanged; not reloaded') + seen('config file changed; reloading') > 0,
      'the watch to see the update',
    )
    expect(seen('config file changed; reloading')).toBe(0)
    // A change of the config file itself still reloads.
    version('..v3', yaml(modern), 'two')
    swap('..v3')
    await eventually(() => seen('config reloaded') > 0, 'the reload')
    expect(seen('config reloaded')).toBe(1)
    expect(await serviceOf(proxy.address('out').port)).toBe('modern')
  })

  it('reloads a file put back after a refused change, and not a refused text again', async () => {
    const file = join(dir, 'proxy.yaml')
    writeFileSync(file, yaml(legacy))
    const log = captureLog()
    proxy = await startProxy({
      config: { file },
      logger: createJsonLogger({ output: log, level: 'debug' }),
      watchDebounceMs: 0,
    })
    const seen = (msg: string) => log.lines().filter((l) => l.msg === msg).length
    const replace = (text: string): void => {
      writeFileSync(`${file}.tmp`, text)
      renameSync(`${file}.tmp`, file)
    }
    replace('services: {}\n')
    await eventually(
      () => seen('config reload refused; the running config stays in force') > 0,
      'the refusal',
    )
    // The same refused text again: nothing to retry.
    replace('services: {}\n')
    await eventually(() => seen('config file unchanged; not reloaded') > 0, 'the event')
    expect(seen('config reload refused; the running config stays in force')).toBe(1)
    // The good file back: reloaded, although it is the text in force.
    replace(yaml(legacy))
    await eventually(() => seen('config reloaded') > 0, 'the reload')
  })
})
