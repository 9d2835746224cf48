// scripts/services.mjs: the CLI round trip, and the watchdog that stops a server whose owner
// died without stopping it. Each test starts its own throwaway PostgreSQL.
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'
import { describe, expect, it } from 'vitest'

const run = promisify(execFile)
const script = fileURLToPath(new URL('../../scripts/services.mjs', import.meta.url))

async function canQuery(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 })
  try {
    await client.connect()
    const result = await client.query('SELECT 1 AS one')
    return result.rows[0]?.one === 1
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

// Waits for a condition that another process brings about (the watchdog checks every second).
async function eventually(check: () => boolean | Promise<boolean>, limitMs: number): Promise<void> {
  const until = Date.now() + limitMs
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not reached in time')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

describe('scripts/services.mjs', () => {
  it('start prints a working URL, env repeats it, stop removes the server and its folder', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'breakwater-services-state-'))
    const env = { ...process.env, BREAKWATER_SERVICES_DIR: stateDir }
    try {
      const started = await run(process.execPath, [script, 'start', 'postgres'], { env })
      const line = started.stdout.trim()
      expect(line).toMatch(
        /^BREAKWATER_TEST_PG_URL=postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/postgres$/,
      )
      const url = line.slice('BREAKWATER_TEST_PG_URL='.length)
      expect(await canQuery(url)).toBe(true)
      const envOut = await run(process.execPath, [script, 'env'], { env })
      expect(envOut.stdout.trim()).toBe(line)
      const again = await run(process.execPath, [script, 'start', 'postgres'], { env })
      expect(again.stdout.trim()).toBe(line)
      const state = JSON.parse(readFileSync(join(stateDir, 'postgres.json'), 'utf8')) as {
        root: string
      }
      expect(existsSync(state.root)).toBe(true)
      await run(process.execPath, [script, 'stop', 'postgres'], { env })
      expect(existsSync(state.root)).toBe(false)
      expect(await canQuery(url)).toBe(false)
      expect((await run(process.execPath, [script, 'env'], { env })).stdout).toBe('')
    } finally {
      rmSync(stateDir, { recursive: true, force: true })
    }
  })

  // A machine restart kills the servers but keeps the state and folders: start printed the dead
  // URL as if the server ran, and env handed it on, so every test then failed to connect.
  it('start replaces a server that no longer answers; env leaves it out and says so', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'breakwater-services-state-'))
    const env = { ...process.env, BREAKWATER_SERVICES_DIR: stateDir }
    try {
      const first = (await run(process.execPath, [script, 'start', 'postgres'], { env })).stdout
      const state = JSON.parse(readFileSync(join(stateDir, 'postgres.json'), 'utf8')) as {
        root: string
      }
      const pid = Number(
        readFileSync(join(state.root, 'data', 'postmaster.pid'), 'utf8').split('\n')[0],
      )
      process.kill(pid, 'SIGKILL')
      await eventually(async () => !(await canQuery(first.trim().split('=')[1]!)), 10_000)
      const envOut = await run(process.execPath, [script, 'env'], { env })
      expect(envOut.stdout).toBe('')
      expect(envOut.stderr).toContain('postgres: not answering')
      const second = (await run(process.execPath, [script, 'start', 'postgres'], { env })).stdout
      expect(second).not.toBe(first)
      expect(await canQuery(second.trim().slice('BREAKWATER_TEST_PG_URL='.length))).toBe(true)
      expect(existsSync(state.root)).toBe(false)
      await run(process.execPath, [script, 'stop', 'postgres'], { env })
    } finally {
      rmSync(stateDir, { recursive: true, force: true })
    }
  })

  it('rejects an unknown command or service with a message', async () => {
    const usage = await run(process.execPath, [script, 'frobnicate']).catch((e) => e)
    expect(usage.code).toBe(2)
    expect(usage.stderr).toContain('usage: node scripts/services.mjs')
    const unknown = await run(process.execPath, [script, 'start', 'mysql']).catch((e) => e)
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain('unknown service "mysql"')
  })

  it('the watchdog stops the server when its owner is killed without stopping it', async () => {
    const owner = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { startService } from ${JSON.stringify(script)}
         const pg = await startService('postgres', { watchPid: process.pid })
         process.stdout.write(JSON.stringify({ url: pg.url, root: pg.root }) + '\\n')
         setInterval(() => {}, 1000)`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    )
    const started = await new Promise<{ url: string; root: string }>((resolve, reject) => {
      let out = ''
      owner.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('\n')) resolve(JSON.parse(out))
      })
      owner.on('exit', (code) => reject(new Error(`owner exited early (${code})`)))
    })
    expect(await canQuery(started.url)).toBe(true)
    owner.kill('SIGKILL')
    await eventually(() => !existsSync(started.root), 20_000)
    expect(await canQuery(started.url)).toBe(false)
  })
})
