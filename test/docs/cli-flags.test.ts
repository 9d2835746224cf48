// Every flag a command's --help lists is in the document a user reads for that command, and
// every flag the documents show is one some command lists. `saga retry|cancel --by`, the saga
// worker's `--metrics-host` and the proxy's `--log-level` were taken (and in --help) but in no
// document, so a reader of docs/saga.md did not learn that the worker's metrics listen on
// 127.0.0.1 only unless told otherwise.

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
