// The `breakwater` entry point itself: which stream the usage goes to, and the exit code.
import { describe, expect, it } from 'vitest'
import { runCli } from '../process/cli-process.js'

describe('breakwater without a command', () => {
  it('prints the usage on stderr with exit 2 (asked for with --help: stdout, exit 0)', async () => {
    const missing = await runCli([])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('usage: breakwater <command>')
    expect(missing.stdout).toBe('')
    const asked = await runCli(['--help'])
    expect(asked.code).toBe(0)
    expect(asked.stdout).toContain('usage: breakwater <command>')
    expect(asked.stderr).toBe('')
  })
})
