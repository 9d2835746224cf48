// `breakwater migrate` with a sqlite: URL found by exploratory testing to go wrong: a folder that
// cannot be created hung the process (Node 20's recursive mkdir loops on /proc), and
// `sqlite://host/abs/path` quietly created ./host/abs/path where the command ran.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { cliNodeArgs } from '../process/cli-process.js'

let dir: string

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'breakwater-cli-url-forms-'))
})

afterEach(() => {
  rmSync(dir, { recursive: true, force: true })
})

/**
 * Runs `breakwater ...args` in `dir`, killing it after `limitMs`: the defect under test is a
 * hang, so a wall-clock guard is the assertion, not a sleep.
 */
async function runIn(
  args: readonly string[],
  limitMs = 20_000,
): Promise<{ code: number | null; stderr: string; killed: boolean }> {
  const child = spawn(process.execPath, [...cliNodeArgs(), ...args], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk
  })
  let killed = false
  const guard = setTimeout(() => {
    killed = true
    child.kill('SIGKILL')
  }, limitMs)
  try {
    const [code] = (await once(child, 'exit')) as [number | null]
    return { code, stderr, killed }
  } finally {
    clearTimeout(guard)
  }
}

describe.runIf(process.platform === 'linux' && existsSync('/proc/self'))(
  'a sqlite: file whose folder cannot be created (under /proc)',
  () => {
    it('breakwater migrate exits 2 at once, naming the path', async () => {
      const result = await runIn(['migrate', '--db', 'sqlite:/proc/nope/x.db'])
      expect(result.killed).toBe(false)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain('breakwater migrate: --db: filename: expected')
      expect(result.stderr).toContain('/proc/nope')
    })

    // README: a read-only place such as /proc is refused with exit 2 naming the folder; a file
    // right in /proc (whose folder exists and takes no new file) got exit 1 and SQLite's bare
    // "unable to open database file".
    it('breakwater migrate exits 2 for a file in /proc itself, naming the folder', async () => {
      const result = await runIn(['migrate', '--db', 'sqlite:/proc/x.db'])
      expect(result.killed).toBe(false)
      expect(result.code, result.stderr).toBe(2)
      expect(result.stderr).toContain('breakwater migrate: --db: filename: expected')
      expect(result.stderr).toContain('the folder /proc ')
      expect(result.stderr).toContain('/proc/x.db')
    })
  },
)

describe('a sqlite://host/path URL', () => {
  it('is refused by breakwater migrate, naming the URL, creating nothing', async () => {
    const result = await runIn(['migrate', '--db', 'sqlite://dbhost/var/app.db'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain('"sqlite://dbhost/var/app.db"')
    expect(result.stderr).toContain('sqlite:///')
    expect(readdirSync(dir)).toEqual([])
  })

  it('leaves sqlite://rel.db as documented: a file in the working directory', async () => {
    const result = await runIn(['migrate', '--db', 'sqlite://rel.db'])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(existsSync(join(dir, 'rel.db'))).toBe(true)
  })
})
