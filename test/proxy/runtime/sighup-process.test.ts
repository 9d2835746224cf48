// A real `breakwater proxy` process reloaded by SIGHUP after its file was edited: a bad value
// keeps the running config and is logged naming the key; a good edit applies; sticky users keep
// their side across a reload that moves weight, except those in the band that changed hands.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../../process/cli-process.js'
import { http, type NamedUpstream, startNamedUpstream } from './helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-hup-'))
let legacy: NamedUpstream
let modern: NamedUpstream

beforeAll(async () => {
  legacy = await startNamedUpstream('legacy')
  modern = await startNamedUpstream('new')
})
afterAll(async () => {
  await legacy.close()
  await modern.close()
})

function config(legacyWeight: string, newWeight: string): string {
  return `services:
  legacy: { endpoints: [${legacy.url}] }
  new: { endpoints: [${modern.url}] }
listeners:
  - name: edge
    role: gateway
    port: 0
    routes:
      - name: orders
        match: { prefix: / }
        sticky: { header: x-user-id }
        targets: [{ service: legacy, weight: ${legacyWeight} }, { service: new, weight: ${newWeight} }]
drainTimeoutMs: 1000
`
}

describe('breakwater proxy reloaded by SIGHUP', () => {
  it('keeps the old config on a bad edit, applies a good one, and keeps sticky users', async () => {
    const file = join(dir, 'proxy.yaml')
    writeFileSync(file, config('50', '50'))
    const cli = spawnCli(['proxy', '--config', file])
    try {
      const started = (await cli.waitForLine((l) => l.msg === 'proxy started', 'the start')) as {
        listeners: { port: number }[]
      }
      const port = started.listeners[0]?.port ?? 0
      const users = Array.from({ length: 60 }, (_, i) => `user-${i}`)
      const sideOf = async (): Promise<Map<string, string>> => {
        const sides = new Map<string, string>()
        for (const user of users) {
          const res = await http(port, '/orders', { headers: { 'x-user-id': user } })
          sides.set(user, (res.json() as { service: string }).service)
        }
        return sides
      }
      const before = await sideOf()
      expect(new Set(before.values())).toEqual(new Set(['legacy', 'new']))

      writeFileSync(file, config('50', '-5'))
      cli.child.kill('SIGHUP')
      const refused = await cli.waitForLine(
        (l) => l.level === 'error' && JSON.stringify(l).includes('.weight'),
        'the refused reload',
      )
      expect(refused).toMatchObject({
        msg: 'config reload refused; the running config stays in force',
        code: 'CONFIG_INVALID',
        problems: [expect.stringContaining('listeners[0].routes[0].targets[1].weight:')],
      })
      expect(await sideOf()).toEqual(before)

      writeFileSync(file, config('30', '70'))
      cli.child.kill('SIGHUP')
      await cli.waitForLine((l) => l.msg === 'config reloaded', 'the good reload')
      const after = await sideOf()
      for (const user of users) {
        // Weight moved from legacy to new: only legacy users move, and only to new.
        if (before.get(user) === 'new') expect(after.get(user)).toBe('new')
      }
      expect([...after.values()].filter((s) => s === 'new').length).toBeGreaterThan(
        [...before.values()].filter((s) => s === 'new').length,
      )
    } finally {
      cli.kill()
      await cli.exited
    }
  }, 60_000)
})
