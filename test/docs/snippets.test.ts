import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../src/proxy/index.js'

// The snippets a new user copies from README.md and docs/*.md must compile against the package
// as it is: a renamed option or export otherwise goes unnoticed until someone tries it. They
// import the built package by its own name (its "exports" map, as exports.test.ts does), so
// `npm test` builds first; run `npm run build` before running this file alone.

const root = new URL('../../', import.meta.url)
const rootPath = fileURLToPath(root)
const markdownFiles = [
  'README.md',
  ...readdirSync(new URL('docs/', root))
    .filter((name) => name.endsWith('.md'))
    .map((name) => `docs/${name}`),
]

interface Snippet {
  /** Where it is: `docs/saga.md:259`, the line after the opening fence. */
  readonly where: string
  readonly code: string
}

/** The fenced blocks of one language in a markdown file. */
function fencedBlocks(file: string, language: string): Snippet[] {
  const lines = readFileSync(new URL(file, root), 'utf8').split('\n')
  const blocks: Snippet[] = []
  let open: { start: number; lines: string[] } | undefined
  lines.forEach((line, index) => {
    if (open === undefined) {
      if (line.trimEnd() === `\`\`\`${language}`) open = { start: index + 2, lines: [] }
    } else if (line.trimEnd() === '```') {
      blocks.push({ where: `${file}:${open.start}`, code: open.lines.join('\n') })
      open = undefined
    } else open.lines.push(line)
  })
  return blocks
}

// What the snippets use without defining it: the reader's own code and values, and, in the
// fragments that continue an earlier snippet, what that snippet imported. Each snippet is a
// module, so one that defines such a name itself shadows the declaration here.
const prelude = `
type CartCommand = { kind: 'add'; sku: string }
type CartEvent = { type: 'added'; data: { sku: string } }
declare global {
  const db: import('breakwater/stores').SqlDriver
  const broker: import('breakwater/brokers').Broker
  const orderId: string
  const sagaId: string
  const amount: number
  const requestIdempotencyKey: string
  const cart: import('breakwater/cqrs').Decider<CartCommand, CartEvent, { items: string[] }>
  const cartHistory: import('breakwater/cqrs').ProjectionDefinition<CartEvent>
  const ctx: import('breakwater/idempotency').IdempotencyContext &
    import('breakwater/saga').StepContext<OrderInput, Record<string, never>>
  const idempotency: import('breakwater/idempotency').Idempotency
  const idempotentHandler: typeof import('breakwater/idempotency').idempotentHandler
  const createIdempotency: typeof import('breakwater/idempotency').createIdempotency
  const idempotent: typeof import('breakwater/idempotency').idempotent
  const defineFlow: typeof import('breakwater/saga').defineFlow
  const createFlowTracker: typeof import('breakwater/saga').createFlowTracker
  type OrderInput = { orderId: string; amount: number }
  const inventory: {
    reserve(input: OrderInput, key: string): Promise<string>
    release(reservationId: string, key: string): Promise<void>
  }
  const payments: {
    charge(amount: number, key: string | { key: string }): Promise<string & { id: string }>
    refund(chargeId: string, key: string): Promise<void>
  }
  const shipping: { ship(orderId: string, key: string): Promise<string> }
  function fetchRate(options: { signal: AbortSignal }): Promise<number>
  function idempotentCharge(
    tx: import('breakwater/stores').SqlExecutor,
    key: string | undefined,
    message: unknown,
  ): Promise<string>
}
export {}
`

/** Type errors of the snippets, each as `file:line: message` with the markdown file's line. */
function typeErrors(snippets: readonly Snippet[]): string[] {
  const config = ts.readConfigFile(`${rootPath}tsconfig.json`, ts.sys.readFile)
  const { options } = ts.parseJsonConfigFileContent(config.config, ts.sys, rootPath)
  // Virtual files beside the tests: the package's own package.json makes them ES modules, and
  // its name resolves through the "exports" map to dist/*.d.ts.
  const virtual = new Map<string, string>([
    [`${rootPath}test/docs/.snippets/prelude.d.ts`, prelude],
  ])
  const origin = new Map<string, Snippet>()
  snippets.forEach((snippet, index) => {
    const path = `${rootPath}test/docs/.snippets/snippet-${index}.ts`
    virtual.set(path, `${snippet.code}\nexport {}\n`)
    origin.set(path, snippet)
  })
  const host = ts.createCompilerHost({ ...options, noEmit: true })
  const readFile = host.readFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  const getSourceFile = host.getSourceFile.bind(host)
  host.readFile = (path) => virtual.get(path) ?? readFile(path)
  host.fileExists = (path) => virtual.has(path) || fileExists(path)
  host.getSourceFile = (path, language, onError, create) => {
    const text = virtual.get(path)
    return text === undefined
      ? getSourceFile(path, language, onError, create)
      : ts.createSourceFile(path, text, language)
  }
  const program = ts.createProgram([...virtual.keys()], { ...options, noEmit: true }, host)
  return ts.getPreEmitDiagnostics(program).map((diagnostic) => {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')
    const file = diagnostic.file
    if (file === undefined || diagnostic.start === undefined) return message
    const { line } = file.getLineAndCharacterOfPosition(diagnostic.start)
    const snippet = origin.get(file.fileName)
    if (snippet === undefined) return `${file.fileName}:${line + 1}: ${message}`
    const [markdown, start] = snippet.where.split(':') as [string, string]
    return `${markdown}:${Number(start) + line}: ${message}`
  })
}

describe('documentation snippets', () => {
  it('every ```ts block of README.md and docs/*.md compiles against the package', () => {
    const snippets = markdownFiles.flatMap((file) => fencedBlocks(file, 'ts'))
    expect(snippets.length).toBeGreaterThan(10)
    expect(typeErrors(snippets)).toEqual([])
  })

  it("docs/proxy.md's complete YAML examples are valid proxy configs", () => {
    // Fragments (a single key, a comment line) are shown in context; whole files say both
    // `services:` and `listeners:`.
    const whole = fencedBlocks('docs/proxy.md', 'yaml').filter(
      ({ code }) => /^services:/m.test(code) && /^listeners:/m.test(code),
    )
    expect(whole.length).toBeGreaterThan(0)
    for (const { where, code } of whole) {
      expect(() => parseProxyConfig(code, where), where).not.toThrow()
    }
  })
})
