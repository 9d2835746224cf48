// A breakwater process's JSON log line holding U+2028 or U+2029 (here in a database path the
// relay could not open) was one record to a JSON parser but three to a line-oriented reader
// (Python's str.splitlines(), log shippers that split on Unicode line breaks), none of which
// parsed. The separators are now written escaped.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runCli } from '../process/cli-process.js'
import { splitLines } from '../support/unicode-lines.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-separators-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('JSON log lines of a real process', () => {
  it('relay: a path with U+2028, U+2029 and U+0085 stays on one line of its own', async () => {
    const file = join(dir, 'a\u2028b\u2029c\u0085d.db')
    const result = await runCli([
      'relay',
      '--db',
      `sqlite:${file}`,
      '--broker',
      'nats://127.0.0.1:1',
    ])
    expect(result.code, result.stderr).toBe(1)
    expect(result.stdout).not.toMatch(/[\u2028\u2029\u0085]/)
    const records = splitLines(result.stdout)
    expect(records).toHaveLength(1)
    const record = JSON.parse(records[0]!) as Record<string, unknown>
    expect(record).toMatchObject({ level: 'error', service: 'breakwater-relay' })
    expect(record.msg).toContain(`cannot open sqlite:${file}`)
  })
})
