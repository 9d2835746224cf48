import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'

// These tests import the built package by its own name (Node resolves a package's self-reference
// through its "exports" map), so they check what users get: `npm test` builds first.
const root = new URL('..', import.meta.url)
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as {
  exports: Record<string, unknown>
}
const subpaths = Object.keys(pkg.exports).filter((s) => s !== './package.json')
const drivers = ['pg', 'better-sqlite3', 'nats', 'amqplib', 'ioredis']

function loadedDrivers(specifier: string): string[] {
  const script = `
    import { createRequire } from 'node:module'
    const require = createRequire(import.meta.url)
    const mod = await import(${JSON.stringify(specifier)})
    if (Object.keys(mod).length === 0) throw new Error('no exports')
    const loaded = Object.keys(require.cache)
    const drivers = ${JSON.stringify(drivers)}
    console.log(JSON.stringify(drivers.filter((d) => loaded.some((p) => p.includes('/node_modules/' + d + '/')))))
  `
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
  })
  return JSON.parse(out.trim()) as string[]
}

describe('package exports', () => {
  it.each(subpaths)('%s resolves and exports something', (subpath) => {
    const specifier = subpath === '.' ? 'breakwater' : `breakwater/${subpath.slice(2)}`
    expect(() => loadedDrivers(specifier)).not.toThrow()
  })

  it('the root entry loads no database or broker driver', () => {
    expect(loadedDrivers('breakwater')).toEqual([])
  })

  it('the driver check can see a loaded driver', () => {
    expect(loadedDrivers('pg')).toContain('pg')
  })
})
