// A strict parser of the Prometheus text exposition format (0.0.4), written from the format's
// description, for tests that read /metrics back: it throws on any line a Prometheus server
// would refuse, so a test that parses output also checks its syntax.

/** One sample line. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

/** A metric family: its HELP, TYPE and samples. */
export interface Family {
  readonly name: string
  help: string | undefined
  type: string | undefined
  readonly samples: Sample[]
}

const nameRe = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const labelRe = /^[a-zA-Z_][a-zA-Z0-9_]*/

function unescapeText(text: string, allowQuote: boolean): string {
  let out = ''
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (c !== '\\') {
      out += c
      continue
    }
    const next = text[++i]
    if (next === '\\') out += '\\'
    else if (next === 'n') out += '\n'
    else if (next === '"' && allowQuote) out += '"'
    else throw new Error(`bad escape \\${next ?? ''} in ${JSON.stringify(text)}`)
  }
  return out
}

function parseValue(text: string): number {
  if (text === '+Inf' || text === 'Inf') return Number.POSITIVE_INFINITY
  if (text === '-Inf') return Number.NEGATIVE_INFINITY
  if (text === 'NaN') return Number.NaN
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value ${text}`)
  return Number(text)
}

function familyOf(families: Map<string, Family>, sample: string): Family | undefined {
  const direct = families.get(sample)
  if (direct !== undefined) return direct
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sample.endsWith(suffix)) continue
    const family = families.get(sample.slice(0, -suffix.length))
    if (family?.type === 'histogram' || family?.type === 'summary') return family
  }
  return undefined
}

/** Parses exposition text; throws with the line number on anything malformed. */
export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>()
  if (text !== '' && !text.endsWith('\n')) throw new Error('the text must end with a line feed')
  const lines = text.split('\n')
  lines.pop()
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`
    if (line.trim() === '') return
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line)
      if (m === null) return // a plain comment
      const [, kind, name, rest] = m as unknown as [string, string, string, string]
      let family = families.get(name)
      if (family === undefined) {
        family = { name, help: undefined, type: undefined, samples: [] }
        families.set(name, family)
      }
      if (kind === 'HELP') {
        if (family.help !== undefined) throw new Error(`${where}: second HELP`)
        family.help = unescapeText(rest, false)
      } else {
        if (family.type !== undefined) throw new Error(`${where}: second TYPE`)
        if (family.samples.length > 0) throw new Error(`${where}: TYPE after samples`)
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest))
          throw new Error(`${where}: bad type`)
        family.type = rest
      }
      return
    }
    const name = nameRe.exec(line)?.[0]
    if (name === undefined) throw new Error(`${where}: no metric name`)
    let rest = line.slice(name.length)
    const labels: Record<string, string> = {}
    if (rest.startsWith('{')) {
      rest = rest.slice(1)
      for (;;) {
        if (rest.startsWith('}')) {
          rest = rest.slice(1)
          break
        }
        const label = labelRe.exec(rest)?.[0]
        if (label === undefined) throw new Error(`${where}: bad label name`)
        rest = rest.slice(label.length)
        if (!rest.startsWith('="')) throw new Error(`${where}: expected ="`)
        rest = rest.slice(2)
        let end = 0
        while (end < rest.length && rest[end] !== '"') end += rest[end] === '\\' ? 2 : 1
        if (end >= rest.length) throw new Error(`${where}: unterminated label value`)
        if (label in labels) throw new Error(`${where}: duplicate label ${label}`)
        labels[label] = unescapeText(rest.slice(0, end), true)
        rest = rest.slice(end + 1)
        if (rest.startsWith(',')) rest = rest.slice(1)
        else if (!rest.startsWith('}')) throw new Error(`${where}: expected , or }`)
      }
    }
    const parts = rest.split(' ')
    if (parts[0] !== '' || parts.length < 2 || parts.length > 3)
      throw new Error(`${where}: expected one space, a value and an optional timestamp`)
    const value = parseValue(parts[1]!)
    const family = familyOf(families, name)
    if (family === undefined) throw new Error(`${where}: sample without HELP/TYPE`)
    family.samples.push({ name, labels, value })
  })
  return families
}

/** The value of the one sample named `name` whose labels include `labels`; throws otherwise. */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number {
  const matches: Sample[] = []
  for (const family of families.values()) {
    for (const sample of family.samples) {
      if (sample.name !== name) continue
      if (Object.entries(labels).every(([k, v]) => sample.labels[k] === v)) matches.push(sample)
    }
  }
  if (matches.length !== 1)
    throw new Error(
      `expected one sample ${name} ${JSON.stringify(labels)}, found ${matches.length}`,
    )
  return matches[0]!.value
}
