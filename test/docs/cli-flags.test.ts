// Every flag a command's --help lists is in the document a user reads for that command, and
// every flag the documents show is one some command lists. `saga retry|cancel --by`, the saga
// worker's `--metrics-host` and the proxy's `--log-level` were taken (and in --help) but in no
// document, so a reader of docs/saga.md did not learn that the worker's metrics listen on
// 127.0.0.1 only unless told otherwise. Each numeric flag of the relay and the saga worker has
// its range in a table of its document, and the range written there is the one the command
// refuses outside of: `--max-attempts` (at most 1,000,000) and the worker's `--lease-ms` (at
// least 30, the library's 10) took less than the library's options without saying so.

import { EventEmitter } from 'node:events'
import { readdirSync, readFileSync } from 'node:fs'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { demoCommand } from '../../src/cli/demo.js'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { proxyCommand } from '../../src/cli/proxy.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { type CapturedEntry, runCaptured } from '../cli/captured.js'

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8')

/** Long flags in `text`; `--broker-*` (a family, in prose) is none. */
function flagsIn(text: string): Set<string> {
  return new Set(text.match(/--[a-z0-9]+(?:-[a-z0-9]+)*(?![-*\w])/g) ?? [])
}

/** Each command's usage and the document that describes its flags. */
const commands: ReadonlyArray<readonly [string, CapturedEntry, string]> = [
  ['relay', relayCommand, 'docs/outbox.md'],
  ['outbox', outboxCommand, 'docs/outbox.md'],
  ['saga', sagaCommand, 'docs/saga.md'],
  ['saga worker', sagaWorkerCommand, 'docs/saga.md'],
  ['proxy', proxyCommand, 'docs/proxy.md'],
  ['migrate', (args, deps) => migrateCommand(args, { capabilities: {}, ...deps }), 'README.md'],
]

async function usageOf(entry: CapturedEntry): Promise<string> {
  const { code, stdout } = await runCaptured(entry, ['--help'])
  expect(code).toBe(0)
  return stdout
}

/** The demo's usage: it writes to the process's own stdout. */
async function demoUsage(): Promise<string> {
  let text = ''
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    text += String(chunk)
    return true
  })
  expect(await demoCommand(['--help'], { signals: new EventEmitter() })).toBe(0)
  vi.restoreAllMocks()
  return text
}

afterEach(() => {
  vi.restoreAllMocks()
})

describe("the CLI's flags in the documentation", () => {
  it.each(commands)(
    'every flag `%s --help` lists is in its document',
    async (_name, entry, doc) => {
      const documented = flagsIn(read(doc))
      const listed = [...flagsIn(await usageOf(entry))].filter((flag) => flag !== '--help')
      expect(listed.length).toBeGreaterThan(0)
      expect(listed.filter((flag) => !documented.has(flag))).toEqual([])
    },
  )

  it('every flag the documents show is one a command lists', async () => {
    const listed = flagsIn(await demoUsage())
    for (const [, entry] of commands)
      for (const flag of flagsIn(await usageOf(entry))) listed.add(flag)
    // Not breakwater's own command flags: rabbitmqctl's, the main command's, and one the relay
    // is documented not to take.
    const others = new Set(['--apply-to', '--version', '--close-timeout'])
    const docs = readdirSync(new URL('../../docs/', import.meta.url)).filter((name) =>
      name.endsWith('.md'),
    )
    const files = ['README.md', ...docs.map((name) => `docs/${name}`)]
    const unknown = files.flatMap((file) =>
      [...flagsIn(read(file))]
        .filter((flag) => !listed.has(flag) && !others.has(flag))
        .map((flag) => `${file}: ${flag}`),
    )
    expect(unknown).toEqual([])
  })
})

/** The long-running commands with numeric flags, their source and the range table's document. */
const ranged: ReadonlyArray<readonly [string, CapturedEntry, string, readonly string[], string]> = [
  ['relay', relayCommand, 'src/cli/relay.ts', [], 'docs/outbox.md'],
  [
    'saga worker',
    sagaWorkerCommand,
    'src/cli/saga-worker.ts',
    ['--module', 'x.js'],
    'docs/saga.md',
  ],
]

/** The rows `| \`--flag\` | A to B | ... |` of `doc`'s tables: flag to `[A, B]`. */
function documentedRanges(doc: string): Map<string, readonly [string, string]> {
  const rows = read(doc).matchAll(/^\| `(--[a-z-]+)` \| (\d+) to (\d+) \|/gm)
  return new Map([...rows].map((row) => [row[1]!, [row[2]!, row[3]!] as const]))
}

describe("the numeric flags' ranges in the documentation", () => {
  it.each(ranged)(
    'every numeric flag of `%s` has its range in its document, as the command refuses it',
    async (_name, entry, source, required, doc) => {
      const documented = documentedRanges(doc)
      // The flags the command reads as integers (integerFlag and metricsFlags' port).
      const numeric = new Set([
        '--metrics-port',
        ...[...read(source).matchAll(/integerFlag\(\s*'(--[a-z-]+)'/g)].map((m) => m[1]!),
      ])
      expect([...numeric].filter((flag) => !documented.has(flag))).toEqual([])
      for (const [flag, [min, max]] of documented) {
        // --stats-interval-ms applies only with --metrics-port.
        const companion = flag === '--stats-interval-ms' ? ['--metrics-port', '0'] : []
        const { code, stderr } = await runCaptured(entry, [...required, ...companion, flag, 'x'])
        expect(code, flag).toBe(2)
        expect(stderr, flag).toMatch(
          new RegExp(`${flag} must be an integer .*from ${min} to ${max},`),
        )
      }
    },
  )
})
