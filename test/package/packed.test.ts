// What `npm pack` gives a user: the tarball installs and works with none of the optional peers
// (database and broker drivers, web frameworks) installed, as the architecture promises (a user
// who wants retry alone installs nothing native), and a driver that is missing is named with the
// command that installs it. test/exports.test.ts checks the subpaths from inside the repository,
// where every driver is installed; these run in an application that has only what npm installs.
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { builtinModules, createRequire } from 'node:module'
import { dirname, join, posix } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { installPacked, type PackedApp, packageJson, repoRoot } from './packed-app.js'

const peers = Object.keys(packageJson.peerDependencies)
const subpaths = Object.keys(packageJson.exports).filter((s) => s !== './package.json')
const specifierOf = (subpath: string): string =>
  subpath === '.' ? packageJson.name : `${packageJson.name}/${subpath.slice(2)}`

let app: PackedApp

beforeAll(() => {
  app = installPacked()
})

afterAll(() => {
  app?.remove()
})

/** Every file path an export condition names (`./dist/x.js` -> `dist/x.js`). */
function exportTargets(value: unknown): string[] {
  if (typeof value === 'string') return [value.replace(/^\.\//, '')]
  if (value === null || typeof value !== 'object') return []
  return Object.values(value).flatMap(exportTargets)
}

describe('the packed package', () => {
  it('is installed without any optional peer (the isolation these tests rely on)', () => {
    const fromApp = createRequire(join(app.dir, 'index.js'))
    const fromRepo = createRequire(join(repoRoot, 'index.js'))
    for (const peer of peers) {
      // Installed in the repository (devDependencies), so a leak into the app would be seen.
      expect(() => fromRepo.resolve(peer), peer).not.toThrow()
      expect(() => fromApp.resolve(peer), peer).toThrow(/Cannot find module/)
    }
  })

  it('holds built code, declarations and docs only', () => {
    const unexpected = app.files.filter(
      (path) =>
        !/^dist\/.+\.(js|js\.map|d\.ts)$/.test(path) &&
        !/^docs\/[^/]+\.(md|json)$/.test(path) &&
        !/^examples\/shop\/(README\.md|dashboard\/.+)$/.test(path) &&
        path !== 'README.md' &&
        path !== 'LICENSE' &&
        path !== 'package.json',
    )
    expect(unexpected).toEqual([])
    expect(app.files.filter((path) => /^(src|test|bench|scripts)\//.test(path))).toEqual([])
    // What the list says is what was extracted.
    expect(app.files.filter((path) => !existsSync(join(app.packageDir, path)))).toEqual([])
  })

  it('holds the license its package.json names', () => {
    expect(packageJson.license).toBe('MIT')
    expect(app.files).toContain('LICENSE')
    const license = readFileSync(join(app.packageDir, 'LICENSE'), 'utf8')
    expect(license).toMatch(/^MIT License\n\nCopyright \(c\) \d{4} breakwater contributors\n/)
    expect(license).toContain('THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND')
  })

  it('has source maps whose sources a debugger can show', () => {
    // A map naming ../src/x.ts that is not in the tarball gives stack-trace mappers and
    // debuggers line numbers in a file the user does not have: each source must be embedded
    // (sourcesContent) or shipped next to the map.
    const files = new Set(app.files)
    const maps = app.files.filter((path) => path.endsWith('.js.map'))
    expect(maps.length).toBeGreaterThan(subpaths.length)
    const unreadable: string[] = []
    for (const path of maps) {
      const map = JSON.parse(readFileSync(join(app.packageDir, path), 'utf8')) as {
        sourceRoot?: string
        sources: string[]
        sourcesContent?: (string | null)[]
      }
      expect(map.sources.length, path).toBeGreaterThan(0)
      map.sources.forEach((source, i) => {
        if (typeof map.sourcesContent?.[i] === 'string') return
        const shipped = posix.normalize(posix.join(dirname(path), map.sourceRoot ?? '', source))
        if (!files.has(shipped)) unreadable.push(`${path}: ${source}`)
      })
    }
    expect(unreadable).toEqual([])
  })

  it('holds every file its exports (types included) and bin name', () => {
    const files = new Set(app.files)
    const targets = [
      ...exportTargets(packageJson.exports),
      ...exportTargets(Object.values(packageJson.bin)),
    ]
    expect(targets.length).toBeGreaterThan(subpaths.length * 2)
    expect(targets.filter((path) => !files.has(path))).toEqual([])
    for (const subpath of subpaths) {
      const entry = packageJson.exports[subpath] as { types?: string }
      expect(entry.types, subpath).toMatch(/\.d\.ts$/)
    }
  })

  it('has declarations that import only Node, itself and its runtime dependencies', () => {
    // A type imported from an optional peer (`import type { Redis } from 'ioredis'`) breaks the
    // compile of a user without that peer (TS2307 under the default skipLibCheck: false), and
    // with skipLibCheck the option silently becomes `any`.
    const allowed = new Set([
      packageJson.name,
      ...Object.keys(packageJson.dependencies),
      ...builtinModules,
    ])
    const offenders: string[] = []
    for (const path of app.files.filter((p) => p.endsWith('.d.ts'))) {
      const text = readFileSync(join(app.packageDir, path), 'utf8')
      const specifiers = text.matchAll(
        /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|reference\s+types=)['"]([^'"]+)['"]/g,
      )
      for (const [, specifier = ''] of specifiers) {
        if (specifier.startsWith('.') || specifier.startsWith('node:')) continue
        const parts = specifier.split('/')
        const name = specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]
        if (!allowed.has(name ?? '')) offenders.push(`${path}: ${specifier}`)
      }
    }
    expect(offenders).toEqual([])
  })

  it('imports every subpath export', () => {
    const specifiers = subpaths.map(specifierOf)
    const loaded = app.script<Record<string, number>>(
      'import-all',
      `const counts = {}
      for (const specifier of ${JSON.stringify(specifiers)}) {
        counts[specifier] = Object.keys(await import(specifier)).length
      }
      const manifest = await import('${packageJson.name}/package.json', { with: { type: 'json' } })
      counts['package.json'] = manifest.default.name === '${packageJson.name}' ? 1 : 0
      console.log(JSON.stringify(counts))`,
    )
    expect(Object.keys(loaded)).toEqual([...specifiers, 'package.json'])
    for (const [specifier, count] of Object.entries(loaded)) {
      expect(count, specifier).toBeGreaterThan(0)
    }
  })

  // The package is ESM only; a CommonJS application loads it with require(esm), which Node
  // runs unflagged from 20.19 (22.12 on 22). The exports' "default" condition is what require()
  // resolves: with "import" alone it failed with ERR_PACKAGE_PATH_NOT_EXPORTED although
  // TypeScript, reading "types", had compiled the require.
  it.runIf(process.features.require_module)('requires every subpath from CommonJS', () => {
    const specifiers = subpaths.map(specifierOf)
    writeFileSync(
      join(app.dir, 'require-all.cjs'),
      `const counts = {}
      for (const specifier of ${JSON.stringify(specifiers)}) {
        counts[specifier] = Object.keys(require(specifier)).length
      }
      const { retry } = require('${packageJson.name}')
      retry({ maxAttempts: 2 }).execute(async () => 1).then((value) => {
        console.log(JSON.stringify({ counts, value }))
      })`,
    )
    const child = app.node(['require-all.cjs'])
    expect(child.stderr).toBe('')
    expect(child.status).toBe(0)
    const { counts, value } = JSON.parse(child.stdout) as {
      counts: Record<string, number>
      value: number
    }
    expect(Object.keys(counts)).toEqual(specifiers)
    for (const [specifier, count] of Object.entries(counts)) {
      expect(count, specifier).toBeGreaterThan(0)
    }
    expect(value).toBe(1)
  })

  it('runs a retry policy end to end on a manual clock', () => {
    const result = app.script<{ value: string; attempts: number; gaveUp: string; now: number }>(
      'retry',
      `import { retry } from '${packageJson.name}'
      import { ManualClock } from '${packageJson.name}/testing'
      const clock = new ManualClock()
      const policy = retry({ maxAttempts: 3, baseDelayMs: 100, clock, shouldRetry: () => true })
      let attempts = 0
      const flaky = policy.execute(async () => {
        attempts += 1
        if (attempts < 3) throw new Error('flaky')
        return 'ok'
      })
      // Both backoffs (at most 100 and 200 ms with full jitter) fall due within this.
      await clock.advance(1_000)
      const value = await flaky
      const failing = policy.execute(async () => { throw new Error('down') }).catch((e) => e.message)
      await clock.advance(1_000)
      console.log(JSON.stringify({ value, attempts, gaveUp: await failing, now: clock.now() }))`,
    )
    expect(result).toEqual({ value: 'ok', attempts: 3, gaveUp: 'down', now: 2_000 })
  })

  it('runs idempotent() on the in-memory store', () => {
    const result = app.script<{ runs: number; first: unknown; again: unknown; other: unknown }>(
      'idempotent',
      `import { createMemoryIdempotencyStore, idempotent } from '${packageJson.name}/idempotency'
      const store = createMemoryIdempotencyStore()
      let runs = 0
      const charge = async () => ({ charge: ++runs })
      const first = await idempotent('order-1', charge, { store, scope: 'payments' })
      const again = await idempotent('order-1', charge, { store, scope: 'payments' })
      const other = await idempotent('order-2', charge, { store, scope: 'payments' })
      console.log(JSON.stringify({ runs, first, again, other }))`,
    )
    expect(result).toEqual({
      runs: 2,
      first: { charge: 1 },
      again: { charge: 1 },
      other: { charge: 2 },
    })
  })

  it('names the missing driver and how to install it, for every database and broker URL', () => {
    const failures = app.script<
      {
        what: string
        driver: string | undefined
        code: string
        instance: boolean
        message: string
      }[]
    >(
      'missing-drivers',
      `import { existsSync } from 'node:fs'
      import { BrokerDriverMissingError, openBroker } from '${packageJson.name}/brokers'
      import { createRedisIdempotencyStore, idempotent } from '${packageJson.name}/idempotency'
      import { DriverMissingError, openDatabase } from '${packageJson.name}/stores'
      const failures = []
      const record = (what, error, type) => failures.push({
        what, driver: error?.driver, code: error?.code, instance: error instanceof type,
        message: String(error?.message ?? error),
      })
      // Port 1: nothing listens there, and nothing may try (the driver is missing first).
      for (const url of ['sqlite:./app.db', 'sqlite::memory:', 'postgres://u:secret@127.0.0.1:1/db']) {
        await openDatabase(url).then(
          () => record(url, undefined, DriverMissingError),
          (error) => record(url, error, DriverMissingError),
        )
      }
      if (existsSync('app.db')) failures.push({ what: 'app.db was created', code: 'FILE' })
      for (const url of ['nats://127.0.0.1:1', 'amqp://127.0.0.1:1', 'redis://127.0.0.1:1']) {
        const broker = openBroker(url)
        const event = { id: 'e1', topic: 'orders', key: 'o1', payload: '{}', headers: {} }
        await broker.publisher.publish([event]).then(
          () => record(url, undefined, BrokerDriverMissingError),
          (error) => record(url, error, BrokerDriverMissingError),
        )
        await broker.close()
      }
      const store = createRedisIdempotencyStore({ url: 'redis://127.0.0.1:1' })
      await idempotent('k', async () => 1, { store }).then(
        () => record('redis idempotency store', undefined, DriverMissingError),
        (error) => record('redis idempotency store', error, DriverMissingError),
      )
      await store.close()
      console.log(JSON.stringify(failures))`,
    )
    const expected = [
      ['sqlite:./app.db', 'better-sqlite3'],
      ['sqlite::memory:', 'better-sqlite3'],
      ['postgres://u:secret@127.0.0.1:1/db', 'pg'],
      ['nats://127.0.0.1:1', 'nats'],
      ['amqp://127.0.0.1:1', 'amqplib'],
      ['redis://127.0.0.1:1', 'ioredis'],
      ['redis idempotency store', 'ioredis'],
    ]
    expect(failures.map((f) => [f.what, f.driver])).toEqual(expected)
    for (const failure of failures) {
      expect(failure.code, failure.what).toBe('DRIVER_MISSING')
      expect(failure.instance, failure.what).toBe(true)
      expect(failure.message, failure.what).toContain(`npm install ${failure.driver}`)
      expect(failure.message, failure.what).not.toContain('secret')
    }
  })

  it('runs its bin', () => {
    const bin = join(app.packageDir, Object.values(packageJson.bin)[0] ?? '')
    expect(readFileSync(bin, 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/)
    const help = app.node([bin, '--help'])
    expect(help.stderr).toBe('')
    expect(help.stdout).toMatch(/^usage: breakwater <command>/)
    expect(help.status).toBe(0)
    // A command that needs a driver says which one, with the run-time failure's exit code.
    const migrate = app.node([bin, 'migrate', '--db', 'sqlite:./cli.db'])
    expect(migrate.stderr).toContain('npm install better-sqlite3')
    expect(migrate.status).toBe(1)
    expect(existsSync(join(app.dir, 'cli.db'))).toBe(false)
  })

  it('typechecks a consumer under moduleResolution node16', () => {
    writeFileSync(
      join(app.dir, 'consumer.ts'),
      `import { retry, type RetryPolicy } from '${packageJson.name}'
      import { createMemoryIdempotencyStore, idempotent } from '${packageJson.name}/idempotency'
      const policy: RetryPolicy = retry({ maxAttempts: 2 })
      export const n: number = await policy.execute(async () => 1)
      export const r: { ok: boolean } = await idempotent('k', async () => ({ ok: true }), {
        store: createMemoryIdempotencyStore(),
      })
      // The declarations are real types, not any.
      // @ts-expect-error maxAttempts is a number
      retry({ maxAttempts: '2' })
      `,
    )
    writeFileSync(
      join(app.dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'node16',
          moduleResolution: 'node16',
          target: 'es2022',
          strict: true,
          noEmit: true,
          // The declarations' imports are checked above; checking all of @types/node here too
          // would take most of this file's time.
          skipLibCheck: true,
          types: ['node'],
        },
        files: ['consumer.ts'],
      }),
    )
    const tsc = app.node([join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'])
    expect(tsc.stdout + tsc.stderr).toBe('')
    expect(tsc.status).toBe(0)
  })
})
