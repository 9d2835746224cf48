// `breakwater proxy` whose reload opens an idempotency store on PostgreSQL that waits on the
// migration lock another session holds: SIGTERM must end the process within its drain bound,
// with exit 0, whether the reload is still waiting or was already refused past its
// startTimeoutMs. The open used to go on after both, and its connection kept the process alive
// until the lock was let go.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { createStoreDatabase, type StoreDatabase } from '../proxy/support/migration-lock.js'
import { until } from '../support/until.js'

let db: StoreDatabase
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-sigterm-store-'))

beforeAll(async () => {
  db = await createStoreDatabase('proxy_sigterm_store')
})
afterAll(async () => {
  await db.drop()
  rmSync(dir, { recursive: true, force: true })
})

const config = (url: string | undefined, startTimeoutMs: number) =>
  `services: { a: { endpoints: [http://127.0.0.1:9] } }
listeners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, match: { prefix: / }, targets: [{ service: a }], idempotency: {} }] }]
${url === undefined ? '' : `idempotency: { url: "${url}" }\n`}startTimeoutMs: ${startTimeoutMs}
drainTimeoutMs: 60000
`

describe('breakwater proxy: SIGTERM while a reloaded store waits on the migration lock', () => {
  for (const [when, startTimeoutMs] of [
    ['after the reload was refused', 500],
    ['while the reload waits', 600_000],
  ] as const)
    it(`exits 0 at once ${when}, its session ended`, async () => {
      const file = join(dir, `proxy-${startTimeoutMs}.yaml`)
      writeFileSync(file, config(undefined, startTimeoutMs))
      const lock = await db.holdMigrationLock()
      const cli = spawnCli(['proxy', '--config', file])
      try {
        await cli.waitForLine((l) => l.msg === 'proxy started', 'the start')
        writeFileSync(file, config(db.fileUrl, startTimeoutMs))
        await until(() => lock.proxyWaits(), 'the reload to wait for the migration lock', 30_000)
        if (startTimeoutMs === 500)
          await cli.waitForLine(
            (l) => l.msg === 'config reload refused; the running config stays in force',
            'the reload to be refused',
          )
        const signalledAt = Date.now()
        cli.child.kill('SIGTERM')
        const exited = await Promise.race([
          cli.exited,
          new Promise<'alive'>((resolve) => setTimeout(() => resolve('alive'), 10_000).unref()),
        ])
        expect(exited, cli.stderr()).toEqual({ code: 0, signal: null })
        expect(Date.now() - signalledAt).toBeLessThan(5_000)
        expect(await lock.proxySessions()).toBe(0)
      } finally {
        cli.kill()
        await lock.close()
      }
    }, 60_000)
})
