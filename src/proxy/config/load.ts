import type { Stats } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import {
  type Alias,
  type Document,
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  type Pair,
  parseDocument,
  visit,
  type YAMLMap,
} from 'yaml'
import type { z } from 'zod'
import { isSecretKey, redactSecrets } from '../../observability/redact.js'
import type { ProxyConfig } from '../contracts.js'
import { crossFieldProblems, formatPath, type RawProblem } from './checks.js'
import { ConfigInvalidError, type ConfigProblem, echo } from './errors.js'
import { type ProxyConfigDocument, proxyConfigSchema, toProxyConfig } from './schema.js'

/**
 * Parses and validates proxy config YAML. Throws {@link ConfigInvalidError} listing every
 * problem (YAML syntax with line and column; each bad path with what was expected and what
 * was found; unknown keys named). Secret values are never echoed in the message.
 *
 * @param yamlText the YAML document
 * @param sourceName a name for messages (the file path, or e.g. `admin reload`)
 *
 * @example
 * ```ts
 * const config = parseProxyConfig(
 *   'services: { app: { endpoints: [http://127.0.0.1:3000] } }\n' +
 *     'listeners: [{ name: out, role: ambassador, port: 15001 }]\n',
 *   'inline',
 * )
 * config.services.get('app')?.loadBalancer // 'round-robin'
 * ```
 */
export function parseProxyConfig(
  yamlText: string,
  sourceName: string,
  overrides: ProxyConfigOverrides = {},
): ProxyConfig {
  return toProxyConfig(validateProxyDocument(yamlText, sourceName, overrides))
}

/**
 * Settings given besides the file (the CLI's `--workers` and `--start-timeout`), validated as
 * if the file held them.
 */
export interface ProxyConfigOverrides {
  /** Replaces the file's `workers`: rules that depend on it (a shared idempotency store) apply. */
  readonly workers?: number | undefined
  /** Replaces the file's `startTimeoutMs` (the CLI's `--start-timeout`). */
  readonly startTimeoutMs?: number | undefined
}

/** Reads a YAML file and {@link parseProxyConfig}s it (the file path names the source). */
export async function loadProxyConfig(
  file: string,
  overrides: ProxyConfigOverrides = {},
): Promise<ProxyConfig> {
  return parseProxyConfig(await readConfigText(file), file, overrides)
}

/**
 * Reads the config file's text. A path that is no regular file (a FIFO, a device, a directory)
 * is refused before it is opened: reading a FIFO nobody writes to never ends, and the read would
 * hold a thread of libuv's pool (which DNS lookups share) for ever, past any timeout. Throws
 * ConfigInvalidError naming `(file)` for that and for a file that cannot be read.
 */
export async function readConfigText(file: string): Promise<string> {
  let kind: string | undefined
  let size = 0
  try {
    const stats = await stat(file)
    kind = fileKind(stats)
    size = stats.size
    if (kind === undefined && size <= maxConfigBytes) return await readFile(file, 'utf8')
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? String(error)
    throw fileProblem(file, `expected a readable YAML file, got ${reason}`)
  }
  if (kind === undefined)
    throw fileProblem(
      file,
      `expected a YAML file of at most 4 MiB (${maxConfigBytes} bytes), got ${size} bytes`,
    )
  throw fileProblem(file, `expected a regular YAML file, got ${kind}`)
}

/**
 * The largest config file read: 4 MiB, some fifty times a config of a thousand services. The
 * YAML parser runs on the event loop, so a larger file (`--config` pointed at a log, a reload of
 * a file a tool filled) held every request of a running proxy while it ran: 126 MB of comments
 * took 12 s and 760 MB. A file that grows past the limit between the size check and the read is
 * read whole all the same; the check is for mistakes, not for an adversary who can write it.
 */
export const maxConfigBytes = 4 * 1024 * 1024

/** What a path that is no regular file is, in words; undefined for a regular file. */
function fileKind(stats: Stats): string | undefined {
  if (stats.isFile()) return undefined
  if (stats.isDirectory()) return 'a directory'
  if (stats.isFIFO()) return 'a FIFO (named pipe)'
  if (stats.isSocket()) return 'a socket'
  if (stats.isCharacterDevice() || stats.isBlockDevice()) return 'a device'
  return 'no regular file'
}

function fileProblem(file: string, message: string): ConfigInvalidError {
  return new ConfigInvalidError(file, [
    { path: '(file)', message, line: undefined, column: undefined },
  ])
}

/**
 * Validates YAML text and returns the document with defaults filled in (the YAML shape, not
 * yet `ProxyConfig`). Throws {@link ConfigInvalidError}.
 */
export function validateProxyDocument(
  yamlText: string,
  sourceName: string,
  overrides: ProxyConfigOverrides = {},
): ProxyConfigDocument {
  const lineCounter = new LineCounter()
  // uniqueKeys (the default) makes a repeated key an error rather than last-one-wins. merge
  // takes YAML 1.1 merge keys (`<<: *defaults`), which operators share settings with; the
  // merged document is validated as if written out in full. resolveKnownTags off: yaml
  // otherwise reads YAML 1.1's !!set, !!omap, !!pairs, !!binary and !!timestamp even under the
  // core schema, into a Set, Map, Buffer or Date that the schema took for an empty mapping (a
  // service `!!set { endpoints }` passed with no endpoints); off, they are tags it does not
  // resolve, which unreadValues refuses by name. logLevel 'error': yaml would tell Node of a
  // list or mapping used as a key (process.emitWarning, advice to its programmer printed
  // beside the problem); the schema names that key itself.
  const doc = parseDocument(yamlText, {
    logLevel: 'error',
    lineCounter,
    prettyErrors: true,
    uniqueKeys: true,
    merge: true,
    resolveKnownTags: false,
  })
  // A key written twice leaves a document that can still be read (the last one wins), so the
  // rest of it is checked too and --check lists every fault at once; a syntax error stops here.
  const repeated = doc.errors.map((error) =>
    error.code === 'DUPLICATE_KEY' ? repeatedKeyProblem(doc, error.pos[0], lineCounter) : undefined,
  )
  const early = repeated.filter((problem) => problem !== undefined)
  if (early.length < doc.errors.length) {
    throw new ConfigInvalidError(
      sourceName,
      doc.errors.map((error, i) => {
        const known = repeated[i]
        if (known !== undefined) return known
        const pos = error.linePos?.[0]
        // The first sentence only: yaml's full message quotes the offending source line,
        // which may hold a secret.
        // yaml's message for a second document is advice to the library's programmer
        // ("please use YAML.parseAllDocuments()"), not to someone writing a config file.
        const what =
          error.code === 'MULTIPLE_DOCS'
            ? 'expected one YAML document, found a second one here (a line `---` or `...` ends the first)'
            : (error.message.split(' at line ')[0]?.split('\n')[0] ?? error.code)
        return {
          path: pos === undefined ? '(yaml)' : `${pos.line}:${pos.col}`,
          message: `YAML syntax error: ${echo(what)}`,
          line: pos?.line,
          column: pos?.col,
        }
      }),
    )
  }
  // A value not read as written (a tag, bytes that are not UTF-8) is named, and the rest of the
  // document is checked too, so --check lists every fault at once; what the schema would say of
  // such a value itself (the text after an unresolved tag) is left out below.
  const unread = unreadValues(doc, yamlText, lineCounter)
  let raw: unknown
  try {
    raw = doc.toJS({ maxAliasCount })
  } catch (error) {
    // A merge of no mapping makes toJS throw with no place: unread names it.
    if (unread.length > 0)
      throw new ConfigInvalidError(sourceName, inDocumentOrder([...early, ...unread]))
    const message = (error as Error).message
    throw new ConfigInvalidError(sourceName, [
      ...early,
      {
        path: '(yaml)',
        message: message.startsWith('Excessive alias count')
          ? `expected a document whose aliases expand at most ${maxAliasCount} times (each use of an anchor counts as many times as the anchors inside it were used), got more: a document whose aliases multiply (a "billion laughs") is refused`
          : // yaml's message names the alias or anchor as written.
            `expected a plain YAML document, got ${echo(message)}`,
        line: undefined,
        column: undefined,
      },
    ])
  }
  if (raw === null || raw === undefined) raw = {}
  if (typeof raw === 'object' && !Array.isArray(raw)) {
    const { workers, startTimeoutMs } = overrides
    raw = {
      ...withoutExtensionFields(raw as Record<string, unknown>),
      ...(workers === undefined ? {} : { workers }),
      ...(startTimeoutMs === undefined ? {} : { startTimeoutMs }),
    }
  }
  // Found through aliases and merge keys, so a problem in merged or aliased settings points at
  // where it is written, not at the `<<: *defaults` or `*slow` that brought it in.
  const resolve = aliasResolver(doc)
  const locate = (path: readonly (string | number)[]): { line?: number; col?: number } => {
    for (let n = path.length; n >= 0; n--) {
      const node = nodeAt(doc.contents, path.slice(0, n), resolve)
      const start = node?.range?.[0]
      if (start !== undefined) {
        const pos = lineCounter.linePos(start)
        return { line: pos.line, col: pos.col }
      }
      // For a missing key, point at the map that should hold it.
      if (n === 0) break
    }
    return {}
  }
  // For unknown keys, point at the key itself rather than at its map.
  const locateKey = (path: readonly (string | number)[], key: string) => {
    const map = nodeAt(doc.contents, path, resolve)
    const pair = isMap(map) ? pairOf(map, key, resolve) : undefined
    const start = isScalar(pair?.key) ? pair.key.range?.[0] : undefined
    if (start !== undefined) {
      const pos = lineCounter.linePos(start)
      return { line: pos.line, col: pos.col }
    }
    return locate(path)
  }

  const problems: (ConfigProblem & { order: number })[] = []
  // Path and message of each problem pushed, for the check below: looking through the list
  // instead made a document with tens of thousands of problems (one listener of many routes,
  // aliased many times) take quadratic time.
  const seen = new Set<string>()
  const push = (
    path: readonly (string | number)[],
    message: string,
    at: { line?: number; col?: number },
  ): void => {
    const formatted = formatPath(path)
    // Two checks of one value can fail with one message (z.int and its max, for 1e30): the
    // reader is told once.
    const key = `${formatted}\n${message}`
    if (seen.has(key)) return
    seen.add(key)
    problems.push({
      path: formatted,
      message,
      line: at.line,
      column: at.col,
      order: orderOf(at.line, at.col),
    })
  }

  const result = proxyConfigSchema.safeParse(raw, { error: expectedText })
  const report = (issue: z.core.$ZodIssue, base: readonly (string | number)[]): void => {
    const path = [...base, ...(issue.path as (string | number)[])]
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys)
        push([...path, key], 'unknown key (not part of the proxy config)', locateKey(path, key))
      return
    }
    if (issue.code === 'invalid_key') {
      const key = path[path.length - 1]
      const inner = issue.issues[0]?.message ?? 'a valid name'
      push(
        path,
        `expected a key that is a ${inner}, got ${echo(String(key), true)}`,
        locateKey(path.slice(0, -1), String(key)),
      )
      return
    }
    const value = valueAt(raw, path)
    if (issue.code === 'invalid_union') {
      // `false or { ... }`-style settings: a mapping that fails is the mapping form with a bad
      // field, so its own problems say more than "true, false or { ... }".
      const mapping = typeof value === 'object' && value !== null && !Array.isArray(value)
      const form = mapping
        ? issue.errors.find(
            (errors) =>
              errors.length > 0 &&
              errors.every((inner) => inner.path.length > 0 || inner.code === 'unrecognized_keys'),
          )
        : undefined
      if (form !== undefined) {
        for (const inner of form) report(inner, path)
        return
      }
    }
    if (
      value === null &&
      ((issue.code === 'invalid_type' && issue.expected === 'object') ||
        (issue.code === 'invalid_union' && offSection(path) !== undefined))
    ) {
      push(path, nullSectionProblem(path), locate(path))
      return
    }
    push(path, `expected ${issue.message}, got ${describe(path, value)}`, locate(path))
  }
  for (const problem of early)
    problems.push({ ...problem, order: orderOf(problem.line, problem.column) })
  if (!result.success) for (const issue of result.error.issues) report(issue, [])
  for (const problem of crossFieldProblems(raw)) addRaw(problem)
  function addRaw(problem: RawProblem): void {
    const got =
      typeof problem.value === 'string' &&
      /^(none|both or neither|\d+ of them|routes|services|all weights 0|a route no request reaches)$/.test(
        problem.value,
      )
        ? problem.value
        : describe(problem.path, problem.value)
    push(problem.path, `expected ${problem.expected}, got ${got}`, locate(problem.path))
  }
  if (unread.length > 0) {
    const under = (path: string, at: string): boolean =>
      at === '(root)' || path === at || path.startsWith(`${at}.`) || path.startsWith(`${at}[`)
    const kept = problems.filter((problem) => !unread.some((u) => under(problem.path, u.path)))
    problems.length = 0
    problems.push(...kept)
    for (const problem of unread)
      problems.push({ ...problem, order: orderOf(problem.line, problem.column) })
  }
  if (problems.length > 0) {
    problems.sort((a, b) => a.order - b.order)
    throw new ConfigInvalidError(
      sourceName,
      problems.map(({ order: _order, ...problem }) => problem),
    )
  }
  return (result as { data: ProxyConfigDocument }).data
}

/**
 * How far the document's aliases may expand: yaml's `maxAliasCount`, which it checks at each
 * alias it resolves against the anchor's uses so far (the anchored node itself counts as one)
 * times, when the anchored node holds aliases, the largest such product among the anchors they
 * name. So one block of defaults merged into 999 services fits (1000), and into about 499 if
 * the block holds an alias of its own; a "billion laughs" (lists of aliases of lists of
 * aliases) is refused within a few levels. yaml's default, 100, refused configs of a hundred
 * services sharing one block. What the loader does grows with this number times the size of
 * what an alias stands for (a merge copies its mapping, and the schema and checks walk every
 * copy): measured on Node 20, a 12 KB file aliasing a listener of 100 routes 999 times took
 * 1.3 s and 250 MB to refuse, where 10,000 took 14 s and 1.5 GB for a 47 KB file. Hence 1000.
 */
const maxAliasCount = 1000

/**
 * Values the document does not hold as written, which the loader would otherwise take without
 * a word: one under a tag that did not resolve (yaml drops the tag and keeps the text, so
 * `!env ORDERS_HOST`, as other tools substitute variables, became the literal name), and text
 * that was not UTF-8 (read as U+FFFD, so a Latin-1 `données.db` named another file). Comments
 * are not values: bytes there change nothing. And a merge key (`<<`) whose value is not a
 * mapping (or a list of them), which yaml refuses only later with no place named.
 */
function unreadValues(doc: Document, yamlText: string, lineCounter: LineCounter): ConfigProblem[] {
  const problems: ConfigProblem[] = []
  const at = (path: (string | number)[], offset: number, message: string): void => {
    const pos = lineCounter.linePos(offset)
    problems.push({ path: formatPath(path), message, line: pos.line, column: pos.col })
  }
  const unresolved = doc.warnings.filter((warning) => warning.code === 'TAG_RESOLVE_FAILED')
  const resolve = aliasResolver(doc)
  visit(doc, {
    Pair(_, pair, ancestors) {
      // A merge key is a plain `<<`, which yaml reads as a symbol (a quoted one is a key).
      if (!isScalar(pair.key) || typeof pair.key.value !== 'symbol') return
      const merged = isAlias(pair.value) ? resolve(pair.value) : pair.value
      const bad = (isSeq(merged) ? merged.items : [merged])
        .map((item) => (isAlias(item) ? resolve(item) : item))
        .find((item) => !isMap(item))
      if (bad === undefined && merged !== undefined) return
      at(
        pathOf([...ancestors, pair], pair.value),
        pair.key.range?.[0] ?? 0,
        `expected a mapping, or a list of mappings, to merge, got ${isSeq(merged) ? `a list holding ${nodeKind(bad)}` : nodeKind(merged)}`,
      )
    },
    Node(_, node, ancestors) {
      const start = node.range?.[0] ?? 0
      // The tag is written just before the value it stands on (blanks between).
      const tag = unresolved.find(
        (warning) =>
          node.range?.[0] !== undefined &&
          start >= warning.pos[1] &&
          yamlText.slice(warning.pos[1], start).trim() === '',
      )
      if (tag !== undefined)
        at(
          pathOf(ancestors, node),
          tag.pos[0],
          `expected a value without a YAML tag (the config resolves none: a secret is read with { env: NAME } or { file: path }), got the tag ${echo(yamlText.slice(tag.pos[0], tag.pos[1]))}`,
        )
      else if (isScalar(node) && typeof node.source === 'string' && node.source.includes('\uFFFD'))
        at(
          pathOf(ancestors, node),
          start,
          'expected UTF-8 text, got bytes that are not UTF-8 (save the file as UTF-8)',
        )
    },
  })
  return problems
}

/** Where a problem sorts: by line, then column; one with no place last. */
function orderOf(line: number | undefined, column: number | undefined): number {
  return (line ?? Number.MAX_SAFE_INTEGER) * 10_000 + (column ?? 0)
}

/** `problems` sorted by where they are (stable: problems at one place keep their order). */
function inDocumentOrder(problems: ConfigProblem[]): ConfigProblem[] {
  return problems.sort((a, b) => orderOf(a.line, a.column) - orderOf(b.line, b.column))
}

/**
 * The problem of a key written twice in one mapping, which yaml reports as "Map keys must be
 * unique" at the second one: that names neither the key nor where it was first written, which
 * in a long file the operator had to find by hand. This names the key's path and both places.
 * Undefined when the key at `offset` is not found (a collection used as a key), so the caller
 * falls back to yaml's text.
 */
function repeatedKeyProblem(
  doc: Document,
  offset: number,
  lineCounter: LineCounter,
): ConfigProblem | undefined {
  let problem: ConfigProblem | undefined
  visit(doc, {
    Map(_, map, ancestors) {
      const again = map.items.find((pair) => isScalar(pair.key) && pair.key.range?.[0] === offset)
      if (again === undefined || !isScalar(again.key)) return undefined
      const value = again.key.value
      const key = keyName(value)
      const first = map.items.find(
        (pair) => isScalar(pair.key) && pair.key.value === value && pair !== again,
      )
      const firstAt = isScalar(first?.key) ? first.key.range?.[0] : undefined
      const where =
        firstAt === undefined
          ? ''
          : ` (first at line ${lineCounter.linePos(firstAt).line}, column ${lineCounter.linePos(firstAt).col})`
      const pos = lineCounter.linePos(offset)
      problem = {
        path: formatPath([...pathOf(ancestors, map), key]),
        message: `expected each key once in its mapping, got ${echo(key, true)} again${where}`,
        line: pos.line,
        column: pos.col,
      }
      return visit.BREAK
    },
  })
  return problem
}

/**
 * What each alias of `doc` stands for, by yaml's rule (the last node before it with its anchor),
 * found in one walk: `Alias.resolve(doc)` walks the whole document at each call, which made
 * 999 merge keys take 1.5 s.
 */
function aliasResolver(doc: Document): (alias: Alias) => Node | undefined {
  const targets = new Map<Alias, Node>()
  const anchored = new Map<string, Node>()
  visit(doc, {
    Node(_, node) {
      if (isAlias(node)) {
        const target = anchored.get(node.source)
        if (target !== undefined) targets.set(node, target)
      } else if (node.anchor !== undefined) anchored.set(node.anchor, node)
    },
  })
  return (alias) => targets.get(alias)
}

/**
 * The node at `path` as the loader reads the document: through aliases, and into the mappings a
 * merge key brings in (see {@link pairOf}). Undefined when nothing is written there.
 */
function nodeAt(
  root: unknown,
  path: readonly (string | number)[],
  resolve: (alias: Alias) => Node | undefined,
): Node | undefined {
  let node = (isAlias(root) ? resolve(root) : root) as Node | null | undefined
  for (const part of path) {
    if (isSeq(node) && typeof part === 'number') node = node.items[part] as Node | undefined
    else if (isMap(node)) node = pairOf(node, String(part), resolve)?.value as Node | undefined
    else return undefined
    if (isAlias(node)) node = resolve(node)
  }
  return node ?? undefined
}

/**
 * The pair that gives `map` its `key`: one written in it, else one of the mappings its merge key
 * names, the first of them first (YAML 1.1's order, which yaml follows: keys written beside a
 * merge win, then earlier merged mappings over later ones).
 */
function pairOf(
  map: YAMLMap,
  key: string,
  resolve: (alias: Alias) => Node | undefined,
  depth = 0,
): Pair | undefined {
  // The last one written: of a key written twice (refused, but the rest is still checked),
  // yaml reads the last.
  const written = map.items.findLast(
    (pair) =>
      isScalar(pair.key) && typeof pair.key.value !== 'symbol' && String(pair.key.value) === key,
  )
  // A mapping that merges itself (through an alias of an enclosing anchor) stops here.
  if (written !== undefined || depth > 32) return written
  for (const pair of map.items) {
    if (!isScalar(pair.key) || typeof pair.key.value !== 'symbol') continue
    const sources = isSeq(pair.value) ? pair.value.items : [pair.value]
    for (const source of sources) {
      const merged = isAlias(source) ? resolve(source) : source
      const found = isMap(merged) ? pairOf(merged, key, resolve, depth + 1) : undefined
      if (found !== undefined) return found
    }
  }
  return undefined
}

/**
 * The top level of a document without its extension fields: keys that start with `x-`, which
 * breakwater ignores as docker-compose does, so a block of shared settings can stand on its own
 * (`x-defaults: &defaults`, then `<<: *defaults` in each service). Only the top level: a
 * service, listener or setting is checked key by key, so a typo there is never taken for one.
 * Their content was read as YAML all the same (tags, bytes, merges), since a merge may take it.
 */
function withoutExtensionFields(document: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(document).filter(([key]) => !key.startsWith('x-')))
}

/** What a YAML node is, for a problem that must not repeat its value. */
function nodeKind(node: unknown): string {
  if (isMap(node)) return 'a mapping'
  if (isSeq(node)) return 'a list'
  if (!isScalar(node) || node.value === null) return 'nothing'
  return typeof node.value === 'boolean' ? 'true or false' : `a ${typeof node.value}`
}

/** The config path of `node`, from the ancestors `visit` gives (a tagged key names its map). */
function pathOf(ancestors: readonly unknown[], node: unknown): (string | number)[] {
  const chain = [...ancestors, node]
  const path: (string | number)[] = []
  for (let i = 0; i + 1 < chain.length; i++) {
    const parent = chain[i]
    const child = chain[i + 1]
    if (isSeq(parent)) path.push(parent.items.indexOf(child as never))
    else if (isPair(parent) && child === parent.value)
      path.push(isScalar(parent.key) ? keyName(parent.key.value) : String(parent.key))
  }
  return path
}

/** A key as the config names it (yaml reads a merge key `<<` as a symbol). */
function keyName(value: unknown): string {
  return typeof value === 'symbol' ? (value.description ?? '') : String(value)
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root
  for (const part of path) {
    if (typeof value !== 'object' || value === null) return undefined
    value = (value as Record<PropertyKey, unknown>)[part]
  }
  return value
}

// Keys under which a string is a secret itself, not a reference to one.
const secretKeys = new Set(['bearer', 'apikey', 'key', 'token'])

/**
 * A route's `sticky.cookie`: its key reads as a secret field's (isSecretKey: `cookie`), but it
 * names the cookie to hash; it holds none. (A `Cookie` header a route matches on stays secret:
 * its key is the user's, under `match.headers`, and its value is a cookie's.)
 */
function isStickyCookie(path: readonly (string | number)[]): boolean {
  return (
    path.length === 6 &&
    path[0] === 'listeners' &&
    path[2] === 'routes' &&
    path[4] === 'sticky' &&
    path[5] === 'cookie'
  )
}

function isSecretPath(path: readonly (string | number)[]): boolean {
  const last = path[path.length - 1]
  // `{ env: NAME }` and `{ file: path }` are references: safe to show.
  if (last === 'env' || last === 'file' || last === 'header') return false
  if (isStickyCookie(path)) return false
  return path.some(
    (part) => typeof part === 'string' && (secretKeys.has(part.toLowerCase()) || isSecretKey(part)),
  )
}

/**
 * The problem of a section given as null (`retry: ~`, or `retry:` with nothing after it). Null
 * is refused for every section rather than read as left out or as `{}`: for a section that is
 * off unless given (retry, circuitBreaker, outlierEjection, admin...) those two readings are
 * opposite, so the refusal says how to write each.
 */
function nullSectionProblem(path: readonly (string | number)[]): string {
  const key = String(path[path.length - 1])
  const head = 'expected a mapping, got null (an empty value)'
  const schema = schemaAt(path)
  if (schema?._zod.def.type === 'default')
    return `${head}: leave ${key} out for its defaults, or give its settings`
  const section = offSection(path)
  const inner = section ?? (schema?._zod.def as { innerType?: z.ZodType } | undefined)?.innerType
  // `{}` is worth offering when it turns something on: some setting has a default, and none
  // is required (`discovery: {}` or `auth: {}` would do nothing).
  const fields = Object.values(
    (inner?._zod.def as { shape?: Record<string, z.ZodType> } | undefined)?.shape ?? {},
  ).map((field) => field._zod.def.type)
  const empty =
    fields.includes('default') && fields.every((type) => type === 'default' || type === 'optional')
  const off =
    section === undefined ? `leave ${key} out` : `leave ${key} out or write "${key}: false"`
  return `${head}: ${off} to go without it${empty ? `, or write "${key}: {}" for its defaults` : ', or give its settings'}`
}

/**
 * The mapping form of a section that `false` turns off (`retry`, `circuitBreaker`,
 * `outlierEjection`: optional, a union of `false` and a mapping), or undefined for any other
 * setting.
 */
function offSection(path: readonly (string | number)[]): z.ZodType | undefined {
  const schema = schemaAt(path)
  if (schema?._zod.def.type !== 'optional') return undefined
  const union = (schema._zod.def as { innerType?: z.ZodType }).innerType
  if (union?._zod.def.type !== 'union') return undefined
  const options = (union._zod.def as { options?: readonly z.ZodType[] }).options ?? []
  const isFalse = (o: z.ZodType): boolean =>
    o._zod.def.type === 'literal' &&
    ((o._zod.def as { values?: readonly unknown[] }).values ?? []).includes(false)
  if (options.length !== 2 || !options.some(isFalse)) return undefined
  return options.find((o) => o._zod.def.type === 'object')
}

/** The zod schema of the setting at `path` of the config, wrappers kept; undefined if none. */
function schemaAt(path: readonly (string | number)[]): z.ZodType | undefined {
  let schema: z.ZodType | undefined = proxyConfigSchema
  for (const part of path) {
    // Looks through the wrappers of the levels above the last (optional, default, a record's
    // values, a list's items); the last level keeps its own, which say what leaving it out means.
    for (;;) {
      const def = schema?._zod.def as
        | {
            type: string
            innerType?: z.ZodType
            shape?: Record<string, z.ZodType>
            valueType?: z.ZodType
            element?: z.ZodType
          }
        | undefined
      if (def === undefined) return undefined
      if (def.type === 'optional' || def.type === 'default') schema = def.innerType
      else if (def.type === 'object') {
        schema = typeof part === 'string' ? def.shape?.[part] : undefined
        break
      } else if (def.type === 'record') {
        schema = def.valueType
        break
      } else if (def.type === 'array') {
        schema = typeof part === 'number' ? def.element : undefined
        break
      } else return undefined
    }
  }
  return schema
}

/** The `got ...` half of a problem: the value, never a secret. */
function describe(path: readonly (string | number)[], value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (typeof value === 'string') {
    if (isSecretPath(path)) return 'a string (not shown: it looks like an inline secret)'
    // A value refused where a variable's name belongs is as often the secret pasted there.
    if (path[path.length - 1] === 'env' && value !== '')
      return 'a string (not shown: it may be the secret itself)'
    // A cookie name written with its value (`sid=...`): the value may be a session.
    if (value.includes('=') && isStickyCookie(path))
      return 'a string with "=" (not shown: it may hold a cookie\'s value)'
    return echo(redactSecrets(value), true)
  }
  if (typeof value === 'number' || typeof value === 'boolean') return String(value)
  if (Array.isArray(value)) return `a list of ${value.length}`
  if (typeof value === 'object') return 'a mapping'
  return typeof value
}

// The "expected ..." text for issues whose schema set no message of its own.
function expectedText(issue: z.core.$ZodRawIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return typeName(String(issue.expected))
    case 'invalid_value':
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`
    case 'too_small':
      return issue.origin === 'array'
        ? `a list of at least ${String(issue.minimum)}`
        : issue.origin === 'string'
          ? `a string of at least ${String(issue.minimum)} characters`
          : `a value ${issue.inclusive === false ? '>' : '>='} ${String(issue.minimum)}`
    case 'too_big':
      return issue.origin === 'array'
        ? `a list of at most ${String(issue.maximum)}`
        : `a value ${issue.inclusive === false ? '<' : '<='} ${String(issue.maximum)}`
    case 'invalid_key':
      return 'a valid name'
    case 'invalid_union':
      return 'one of the allowed forms'
    case 'invalid_format':
      return `a ${issue.format}`
    default:
      return 'a valid value'
  }
}

function typeName(expected: string): string {
  switch (expected) {
    case 'object':
    case 'record':
      return 'a mapping'
    case 'array':
      return 'a list'
    case 'int':
      return 'an integer'
    case 'boolean':
      return 'true or false'
    default:
      return `a ${expected}`
  }
}
