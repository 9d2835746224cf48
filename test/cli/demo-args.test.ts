// `breakwater demo` answers bad arguments with exit 2 and never shows a password they hold:
// `--db` belongs to the shop, and given to `demo policies` it is quoted back as unknown.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { demoCommand } from '../../src/cli/demo.js'

afterEach(() => {
  vi.restoreAllMocks()
})

describe('breakwater demo: a password in a bad argument', () => {
  const url = 'postgres://app:hunter2-pw@db/app'
  it.each([
    [['policies', `--db=${url}`]],
    [['policies', url]],
    [['policies', '--only', url]],
    [[`--dbx=${url}`]],
  ])('demo %j exits 2 without printing it', async (args) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    expect(await demoCommand(args)).toBe(2)
    expect(stderr).toContain('breakwater demo: ')
    expect(stderr).toContain('postgres://app:***@db/app')
    expect(stderr).not.toContain('hunter2')
  })
})

describe('breakwater demo: a word named like an Object member', () => {
  it.each([['constructor'], ['toString']])('demo %s is an unknown demo, exit 2', async (word) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    expect(await demoCommand([word])).toBe(2)
    expect(stderr).toContain(`breakwater demo: unknown demo "${word}" (known: shop, policies)`)
  })
})
