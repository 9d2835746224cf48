import { Resolver } from 'node:dns/promises'
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { parse as parseYaml } from 'yaml'
import type { Clock, TimerHandle } from '../../core/clock.js'
import { InvalidOptionError } from '../../core/errors.js'
import type { Logger } from '../../observability/logger.js'
import type { DiscoveryConfig } from '../contracts.js'
import type { EndpointTarget } from './endpoints.js'
import { type FileWatch, watchFileContent } from './file-watch.js'

/**
 * The part of `dns.promises.Resolver` DNS discovery uses. Pass your own (e.g. one pointed at a
 * test server with `setServers`) through `ServiceRuntimeOptions.dnsResolver`.
 */
export interface DnsResolver {
  resolve4(name: string, options: { ttl: true }): Promise<{ address: string; ttl: number }[]>
  resolve6(name: string, options: { ttl: true }): Promise<{ address: string; ttl: number }[]>
  resolveSrv(
    name: string,
  ): Promise<{ name: string; port: number; priority: number; weight: number }[]>
}

/** A running discovery: stops with `close()`. */
export interface Discovery {
  /** Settles after the first answer (or the first failure, which leaves the list empty). */
  readonly ready: Promise<void>
  close(): void
}

/** What a discovery needs from its service. */
export interface DiscoveryContext {
  readonly service: string
  readonly clock: Clock
  readonly logger: Logger
  readonly resolver: DnsResolver | undefined
  readonly onTargets: (targets: readonly EndpointTarget[]) => void
}

/**
 * Validates an endpoint URL (`http(s)://host[:port]`, no credentials, no path, query or
 * fragment) and returns its origin. Throws `InvalidOptionError` naming `option`.
 */
export function parseEndpointUrl(option: string, raw: string): string {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new InvalidOptionError(option, 'an http(s)://host:port URL', raw)
  }
  if (
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.username !== '' ||
    url.password !== '' ||
    (url.pathname !== '/' && url.pathname !== '') ||
    url.search !== '' ||
    url.hash !== ''
  )
    throw new InvalidOptionError(option, 'an http(s)://host:port URL without path', raw)
  // Port 0 parses, but nothing listens there: every request to the endpoint would fail.
  if (url.port === '0')
    throw new InvalidOptionError(
      option,
      'an http(s)://host:port URL whose port is from 1 to 65535',
      raw,
    )
  return url.origin
}

/** Parses a discovery file: a JSON array, a YAML sequence, or one URL per line (`#` comments). */
export function parseEndpointFile(text: string): string[] {
  const trimmed = text.trim()
  if (trimmed.startsWith('[') || trimmed.startsWith('-')) {
    const parsed: unknown = trimmed.startsWith('[') ? JSON.parse(trimmed) : parseYaml(trimmed)
    if (!Array.isArray(parsed) || !parsed.every((item) => typeof item === 'string'))
      throw new Error('expected an array of endpoint URLs')
    return parsed as string[]
  }
  return trimmed
    .split('\n')
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '')
}

/** Starts the discovery `config` describes; targets arrive through `context.onTargets`. */
export function startDiscovery(config: DiscoveryConfig, context: DiscoveryContext): Discovery {
  switch (config.kind) {
    case 'static': {
      context.onTargets(
        config.endpoints.map((raw, i) => ({
          url: parseEndpointUrl(`services.${context.service}.endpoints[${i}]`, raw),
          servername: undefined,
        })),
      )
      return { ready: Promise.resolve(), close() {} }
    }
    case 'file':
      return startFileDiscovery(config.path, context)
    case 'dns':
      return new DnsDiscovery(config, context)
  }
}

/**
 * Quiet time after the last change event before a discovery file is read, as for the config
 * file: a writer that truncates and then writes (`writeFileSync`, a shell's `>`), or writes in
 * several parts, is read once, when it is done, not half-way.
 */
const fileDebounceMs = 250

/**
 * How long a discovery file that lists no endpoint must stay so before the service's
 * endpoints go: a read that finds it empty is more often a write caught half-way than a wish
 * to refuse every request.
 */
const confirmEmptyMs = 1_000

// Reads the file at start and after each change (debounced). An unparsable read keeps the
// endpoints as they were; so does one that lists no valid endpoint while there are some,
// until a read `confirmEmptyMs` later finds the file still listing none (any change in
// between, a list again, drops that check).
function startFileDiscovery(path: string, context: DiscoveryContext): Discovery {
  const { clock, logger, service } = context
  /** Endpoints applied last. */
  let current = 0
  /** Counts applied answers and changes, so a confirming read that a change overtook is dropped. */
  let generation = 0
  let confirm: TimerHandle | undefined
  let closed = false
  const targetsOf = (content: Buffer): EndpointTarget[] | undefined => {
    let urls: string[]
    try {
      urls = parseEndpointFile(content.toString('utf8'))
    } catch (error) {
      logger.warn('discovery file unreadable; keeping the endpoints as they were', {
        service,
        file: path,
        error: (error as Error).message,
      })
      return undefined
    }
    const targets: EndpointTarget[] = []
    for (const raw of urls) {
      try {
        targets.push({ url: parseEndpointUrl('endpoint', raw), servername: undefined })
      } catch {
        logger.warn('discovery file lists an invalid endpoint; skipped', {
          service,
          file: path,
          endpoint: raw,
        })
      }
    }
    return targets
  }
  const set = (targets: EndpointTarget[]): void => {
    current = targets.length
    context.onTargets(targets)
    logger.info('endpoints updated from file', { service, file: path, endpoints: current })
  }
  const confirmEmpty = (): void => {
    confirm = undefined
    const seen = generation
    readFile(path).then(
      (content) => {
        if (closed || seen !== generation) return
        const targets = targetsOf(content)
        if (targets !== undefined && targets.length === 0) set(targets)
      },
      // Gone or unreadable: the endpoints stay, as for any unreadable file.
      () => undefined,
    )
  }
  const apply = (content: Buffer): void => {
    generation++
    clock.clearTimeout(confirm)
    confirm = undefined
    const targets = targetsOf(content)
    if (targets === undefined) return
    if (targets.length === 0 && current > 0) {
      logger.warn('discovery file lists no endpoints; keeping them unless it still does later', {
        service,
        file: path,
        confirmMs: confirmEmptyMs,
      })
      confirm = clock.setTimeout(confirmEmpty, confirmEmptyMs)
      return
    }
    set(targets)
  }
  let initial: Buffer | undefined
  try {
    initial = readFileSync(path)
    apply(initial)
  } catch (error) {
    logger.warn('discovery file missing; no endpoints until it appears', {
      service,
      file: path,
      error: (error as Error).message,
    })
  }
  const watch: FileWatch = watchFileContent(
    path,
    initial,
    apply,
    (error) =>
      logger.warn('discovery file watch failed', {
        service,
        file: path,
        error: (error as Error).message,
      }),
    { debounceMs: fileDebounceMs, clock },
  )
  return {
    ready: Promise.resolve(),
    close: () => {
      closed = true
      clock.clearTimeout(confirm)
      watch.close()
    },
  }
}

type DnsConfig = Extract<DiscoveryConfig, { kind: 'dns' }>

// Re-resolves when the shortest TTL of the answer runs out, bounded by [minRefreshMs,
// maxRefreshMs]. Node's resolveSrv does not report the SRV record's own TTL, so an SRV answer
// lives as long as the shortest TTL of the address records of its targets, which are resolved
// through the same resolver (so the endpoints are addresses and the SRV target stays the TLS
// name). A failed lookup keeps the last answer and tries again after maxRefreshMs; before the
// first answer (no endpoints to keep), after minRefreshMs (at least 1 s), doubling up to
// maxRefreshMs.
class DnsDiscovery implements Discovery {
  readonly ready: Promise<void>
  readonly #config: DnsConfig
  readonly #context: DiscoveryContext
  readonly #resolver: DnsResolver
  /** The resolver this discovery made (not one it was given, which others may share). */
  readonly #own: Resolver | undefined
  #timer: TimerHandle | undefined
  #closed = false
  /** Whether a lookup has succeeded yet (the service has endpoints to keep). */
  #answered = false
  /** The wait after the next failed lookup while none has succeeded. */
  #failureDelayMs: number

  constructor(config: DnsConfig, context: DiscoveryContext) {
    // At least 1 s (minRefreshMs may be 0), so that failures back off instead of looping.
    this.#failureDelayMs = Math.min(config.maxRefreshMs, Math.max(config.minRefreshMs, 1_000))
    this.#config = config
    this.#context = context
    if (context.resolver !== undefined) {
      this.#resolver = context.resolver
    } else {
      const resolver = new Resolver()
      if (config.servers !== undefined && config.servers.length > 0)
        resolver.setServers([...config.servers])
      this.#resolver = resolver
      this.#own = resolver
    }
    this.ready = this.#refresh()
  }

  close(): void {
    this.#closed = true
    if (this.#timer !== undefined) this.#context.clock.clearTimeout(this.#timer)
    this.#timer = undefined
    // A lookup under way would hold the process open until the resolver gives up (its timeout
    // and retries: over a minute against a server that does not answer), long after the
    // service closed; cancelled, it fails at once (ECANCELLED) and #refresh ends quietly.
    this.#own?.cancel()
  }

  async #refresh(): Promise<void> {
    const { clock, logger, service } = this.#context
    const config = this.#config
    let nextMs = config.maxRefreshMs
    try {
      const { targets, ttlSeconds } = await this.#resolve()
      if (this.#closed) return
      this.#context.onTargets(targets)
      this.#answered = true
      nextMs = Math.min(config.maxRefreshMs, Math.max(config.minRefreshMs, ttlSeconds * 1000))
      logger.debug('endpoints resolved', {
        service,
        name: config.name,
        endpoints: targets.length,
        nextMs,
      })
    } catch (error) {
      if (this.#closed) return
      // Before the first answer the service has no endpoint and refuses every request (503
      // UPSTREAM_NO_ENDPOINTS): a lookup that failed at start (DNS not ready yet as the pod
      // comes up) must not leave it so for a whole maxRefreshMs. Tried again after
      // minRefreshMs (at least 1 s), then twice as long each time up to maxRefreshMs.
      if (!this.#answered) {
        nextMs = this.#failureDelayMs
        this.#failureDelayMs = Math.min(config.maxRefreshMs, this.#failureDelayMs * 2)
      }
      logger.warn('DNS discovery failed; keeping the endpoints as they were', {
        service,
        name: config.name,
        error: (error as Error).message,
        retryInMs: nextMs,
      })
    }
    this.#timer = clock.setTimeout(() => {
      this.#timer = undefined
      if (!this.#closed) void this.#refresh()
    }, nextMs)
  }

  async #resolve(): Promise<{ targets: EndpointTarget[]; ttlSeconds: number }> {
    const config = this.#config
    const resolver = this.#resolver
    const targets: EndpointTarget[] = []
    let ttl = Number.POSITIVE_INFINITY
    const addresses = async (name: string, six: boolean) => {
      const records = six
        ? await resolver.resolve6(name, { ttl: true })
        : await resolver.resolve4(name, { ttl: true })
      for (const record of records) ttl = Math.min(ttl, record.ttl)
      return records.map((record) => record.address)
    }
    const push = (address: string, port: number, servername: string, priority = 0, weight = 1) => {
      const host = isIP(address) === 6 ? `[${address}]` : address
      targets.push({ url: `${config.scheme}://${host}:${port}`, servername, priority, weight })
    }
    if (config.recordType === 'SRV') {
      // Priority and weight are kept, as RFC 2782 says: the endpoint set picks among the lowest
      // priority in use, in proportion to weight (weight 0: only when all of that priority are
      // 0, or the others are ejected). The weight is the target host's share, so it is split
      // among the target's addresses: a name with two addresses gets no more than with one.
      const records = await resolver.resolveSrv(config.name)
      for (const record of records) {
        const found = await addresses(record.name, false)
        for (const address of found)
          push(address, record.port, record.name, record.priority, record.weight / found.length)
      }
    } else {
      const port = config.port ?? (config.scheme === 'https' ? 443 : 80)
      for (const address of await addresses(config.name, config.recordType === 'AAAA'))
        push(address, port, config.name)
    }
    return { targets, ttlSeconds: ttl === Number.POSITIVE_INFINITY ? 0 : ttl }
  }
}
