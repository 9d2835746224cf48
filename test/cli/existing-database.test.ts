// An admin command on a breakwater database the user may read but whose folder it may not write
// (a file an operator inspects as another user, a read-only mount): SQLite creates <file>-shm
// beside a WAL database even to read it, so the read-only check failed, and the message said
// the file was "not a readable SQLite database", which sent the operator looking for
// corruption in a database that was fine. The process runs as a user the folder refuses:
// `nobody` when the tests run as root (root writes in any folder), else the test's own user.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { migrateOutbox } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { cliNodeArgs } from '../process/cli-process.js'

const nobody = 65_534
let folder: string
let file: string

beforeAll(async () => {
  folder = mkdtempSync(join(tmpdir(), 'breakwater-cli-readonly-'))
  file = join(folder, 'app.db')
  const db = await openDatabase(`sqlite:${file}`)
  try {
    await migrateOutbox(db)
  } finally {
    await db.close()
  }
  chmodSync(folder, 0o555)
})

afterAll(() => {
  chmodSync(folder, 0o700)
  rmSync(folder, { recursive: true, force: true })
})

async function runAsOther(args: readonly string[]): Promise<{ code: number; stderr: string }> {
  const asRoot = process.getuid?.() === 0
  const child = spawn(process.execPath, [...cliNodeArgs(), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    ...(asRoot ? { uid: nobody, gid: nobody } : {}),
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  const [code] = (await once(child, 'exit')) as [number]
  return { code, stderr }
}

describe('a breakwater database in a folder the user cannot write', () => {
  it('is refused naming the folder, not as an unreadable database, and left as it was', async (context) => {
    // As root the CLI runs as `nobody`, which needs to read this checkout and the compiled CLI:
    // a checkout under a private folder (/root/...) cannot be, and that says nothing about the
    // message under test.
    const probe = await runAsOther(['help'])
    if (probe.code !== 0)
      context.skip(`user nobody cannot run the CLI from this checkout: ${probe.stderr.trim()}`)
    const before = readFileSync(file)
    const result = await runAsOther(['outbox', 'stats', '--db', `sqlite:${file}`])
    expect(result.code).toBe(1)
    expect(result.stderr).toContain(
      `cannot open sqlite:${file}: its folder ${folder} is not writable`,
    )
    expect(result.stderr).not.toContain('not a readable SQLite database')
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(readdirSync(folder)).toEqual(['app.db'])
    expect(readFileSync(file).equals(before)).toBe(true)
  })
})
