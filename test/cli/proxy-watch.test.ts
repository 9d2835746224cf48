// `breakwater proxy` with workers: the primary watches the config file and has every worker
// reload it, also when the file is mounted from a Kubernetes ConfigMap (the kubelet swaps the
// ..data symlink, and no event of the folder names the file itself).

import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { http, type NamedUpstream, startNamedUpstream } from '../proxy/runtime/helpers.js'

let legacy: NamedUpstream
let modern: NamedUpstream
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cli-watch-'))

beforeAll(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('modern')
})
afterAll(async () => {
  await legacy.close()
  await modern.close()
  rmSync(dir, { recursive: true, force: true })
})

function yaml(upstream: NamedUpstream): string {
  return `services: { a: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nworkers: 2\ndrainTimeoutMs: 1000\n`
}

/** Runs the proxy on `file`, calls `update`, and checks that every worker routes by the new file. */
async function reloadsOn(file: string, update: () => void): Promise<void> {
  const cli = spawnCli(['proxy', '--config', file])
  try {
    const started = (await cli.waitForLine((l) => l.msg === 'proxy started', 'a worker')) as {
      listeners: { port: number }[]
    }
    await cli.waitForLine(
      () => cli.lines.filter((l) => l.msg === 'proxy started').length === 2,
      'both workers',
    )
    const port = started.listeners[0]?.port ?? 0
    expect((await http(port, '/a/x')).json()).toMatchObject({ service: 'legacy' })
    update()
    await cli.waitForLine((l) => l.msg === 'config reloaded in every worker', 'the reload')
    expect(cli.lines.map((l) => l.msg)).toContain('config file changed: reloading the config')
    for (let i = 0; i < 4; i++)
      expect((await http(port, '/a/x')).json()).toMatchObject({ service: 'modern' })
    cli.child.kill('SIGTERM')
    expect(await cli.exited).toEqual({ code: 0, signal: null })
  } finally {
    cli.kill()
  }
}

describe('breakwater proxy with workers, config file watch', () => {
  it('reloads every worker when a plain file is replaced by rename', async () => {
    const folder = mkdtempSync(join(dir, 'plain-'))
    const file = join(folder, 'proxy.yaml')
    writeFileSync(file, yaml(legacy))
    await reloadsOn(file, () => {
      writeFileSync(`${file}.tmp`, yaml(modern))
      renameSync(`${file}.tmp`, file)
    })
  })

  it('reloads every worker when the kubelet swaps ..data of a ConfigMap volume', async () => {
    const folder = mkdtempSync(join(dir, 'configmap-'))
    const version = (name: string, text: string): void => {
      mkdirSync(join(folder, name))
      writeFileSync(join(folder, name, 'proxy.yaml'), text)
    }
    version('..2026_01_01_00_00_00.1', yaml(legacy))
    symlinkSync('..2026_01_01_00_00_00.1', join(folder, '..data'))
    symlinkSync(join('..data', 'proxy.yaml'), join(folder, 'proxy.yaml'))
    await reloadsOn(join(folder, 'proxy.yaml'), () => {
      version('..2026_01_02_00_00_00.2', yaml(modern))
      symlinkSync('..2026_01_02_00_00_00.2', join(folder, '..data_tmp'))
      renameSync(join(folder, '..data_tmp'), join(folder, '..data'))
      rmSync(join(folder, '..2026_01_01_00_00_00.1'), { recursive: true })
    })
  })

  it('reloads nothing when a ConfigMap update leaves the config file as it was', async () => {
    // An update of another key swaps ..data too; a reload would put switched routes back.
    const folder = mkdtempSync(join(dir, 'two-keys-'))
    const version = (name: string, text: string, other: string): void => {
      mkdirSync(join(folder, name))
      writeFileSync(join(folder, name, 'proxy.yaml'), text)
      writeFileSync(join(folder, name, 'other.txt'), other)
    }
    version('..v1', yaml(legacy), 'one')
    symlinkSync('..v1', join(folder, '..data'))
    symlinkSync(join('..data', 'proxy.yaml'), join(folder, 'proxy.yaml'))
    symlinkSync(join('..data', 'other.txt'), join(folder, 'other.txt'))
    const cli = spawnCli(['proxy', '--config', join(folder, 'proxy.yaml'), '--log-level', 'debug'])
    try {
      await cli.waitForLine(
        () => cli.lines.filter((l) => l.msg === 'proxy started').length === 2,
        'both workers',
      )
      version('..v2', yaml(legacy), 'two')
      symlinkSync('..v2', join(folder, '..data_tmp'))
      renameSync(join(folder, '..data_tmp'), join(folder, '..data'))
      const seen = await cli.waitForLine(
        (l) =>
          l.msg === 'config file unchanged; not reloaded' ||
          l.msg === 'config file changed: reloading the config',
        'the watch to see the update',
      )
      expect(seen.msg).toBe('config file unchanged; not reloaded')
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toEqual({ code: 0, signal: null })
    } finally {
      cli.kill()
    }
  })
})
