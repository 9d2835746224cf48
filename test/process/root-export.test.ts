// runUntilSignal is documented (docs/errors.md, docs/architecture.md, README.md) for running a
// relay, subscription or saga worker until SIGTERM, but no package entry exported it. It comes
// from the root entry, which must stay free of drivers: src/process imports only node: modules
// and src/core.
import { readdirSync, readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import * as rootEntry from '../../src/index.js'
import { runUntilSignal } from '../../src/process/index.js'

describe("runUntilSignal from the root entry ('breakwater')", () => {
  it('is exported', () => {
    expect((rootEntry as Record<string, unknown>).runUntilSignal).toBe(runUntilSignal)
  })

  it('and its types', () => {
    // A compile-time check: these names must resolve from the root entry.
    const outcome: rootEntry.RunOutcome = { reason: 'ended' }
    const options: rootEntry.RunUntilSignalOptions = { drainTimeoutMs: 1 }
    const service: rootEntry.RunningService = { stop: async () => {} }
    const target: rootEntry.SignalTarget = { on: () => {}, off: () => {} }
    expect([outcome, options, service, target]).toHaveLength(4)
  })

  it('loads no driver: src/process imports only node: modules and src/core', () => {
    const folder = new URL('../../src/process/', import.meta.url)
    const seen: string[] = []
    for (const name of readdirSync(folder)) {
      const text = readFileSync(new URL(name, folder), 'utf8')
      for (const [, from] of text.matchAll(/^(?:import|export)\b[^;]*?from '([^']+)'/gm)) {
        expect(from, `${name} imports ${from}`).toMatch(/^(node:|\.\.\/core\/|\.\/)/)
        seen.push(from!)
      }
    }
    // The check read the imports at all.
    expect(seen).toContain('../core/clock.js')
  })
})
