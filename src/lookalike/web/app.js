// The lookalike search page: query a collection by image, URL, text or a result's id.
// The query lives in the page URL (?c=NAME&id=|text=|url=[&k=]), so searches can be shared and
// the back button walks the trail of clicks.

const DEFAULT_K = 20;
const KEY_STORAGE = 'lookalike.apiKey';
const LINKABLE = ['id', 'text', 'url']; // query kinds that fit in the page URL
const CAPTION_KEYS = ['title', 'name', 'caption', 'label', 'filename'];

const $ = (selector) => document.querySelector(selector);
const els = {
  main: $('#main'),
  collection: $('#collection'),
  collectionName: $('#collection-name'),
  collectionInfo: $('#collection-info'),
  file: $('#file'),
  urlForm: $('#url-form'),
  urlInput: $('#url-input'),
  textForm: $('#text-form'),
  textInput: $('#text-input'),
  textButton: $('#text-button'),
  textHint: $('#text-hint'),
  keyForm: $('#key-form'),
  keyInput: $('#key-input'),
  keyMessage: $('#key-message'),
  error: $('#error'),
  summary: $('#summary'),
  previewButton: $('#preview-button'),
  preview: $('#preview'),
  queryLabel: $('#query-label'),
  stats: $('#stats'),
  exportJson: $('#export-json'),
  exportCsv: $('#export-csv'),
  k: $('#k'),
  empty: $('#empty'),
  results: $('#results'),
  more: $('#more'),
  details: $('#details'),
  detailsTitle: $('#details-title'),
  detailsImage: $('#details-image'),
  detailsFacts: $('#details-facts'),
  detailsMetadata: $('#details-metadata tbody'),
  detailsNoMetadata: $('#details-no-metadata'),
  detailsLink: $('#details-link'),
  detailsSimilar: $('#details-similar'),
  dropOverlay: $('#drop-overlay'),
};
const EMPTY_HINT = els.empty.textContent.trim();

const state = {
  collections: [],
  current: null, // the selected collection
  query: null, // the query shown: {c, kind, value, file?, preview?}
  response: null, // its search response, once answered
  seq: 0, // number of the latest request; answers to older ones are dropped
  detailsId: null,
};
const shown = new Map(); // history entry key -> {query, response}, for back and forward
let entries = 0;

// ---- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: withKey(options.headers) });
  } catch (error) {
    throw new ApiError(`Could not reach the server (${error.message}).`, 'network', 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: described by the status below
  }
  if (!response.ok) {
    const detail = body && body.error;
    if (response.status === 401) askForKey();
    throw new ApiError(
      (detail && detail.message) || `HTTP ${response.status} ${response.statusText}`.trim(),
      (detail && detail.code) || `http_${response.status}`,
      response.status,
    );
  }
  return body;
}

const collectionPath = (name) => `/v1/collections/${encodeURIComponent(name)}`;

function searchRequest(query) {
  if (query.kind === 'upload') {
    const form = new FormData();
    form.append('image', query.file, query.file.name || 'upload');
    form.append('k', String(query.k));
    return { method: 'POST', body: form };
  }
  const value = query.kind === 'id' ? Number(query.value) : query.value;
  return {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ [query.kind]: value, k: query.k }),
  };
}

// Why the page will not send a query, or null: what it can tell without asking the server.
function queryProblem(query) {
  if (!isCount(query.k)) {
    return new ApiError(
      `“${query.k}” is not a number of results: k must be a whole number from 1 up.`,
      'bad_k',
    );
  }
  if (query.kind === 'id' && !isCount(query.value, 0)) {
    return new ApiError(
      `“${query.value}” is not an image id: ids are whole numbers, like 3.`,
      'bad_id',
    );
  }
  const c = state.collections.find((known) => known.name === query.c);
  if (query.kind === 'text' && c && !c.supports_text) {
    return new ApiError(
      `The collection “${c.name}” uses an image-only model (${c.model}), which cannot search `
      + 'by text: search by an image or an image URL instead.',
      'text_unsupported',
    );
  }
  return null;
}

// Whether `value` (a number or the text of one) is a whole number from `least` up.
function isCount(value, least = 1) {
  const text = String(value);
  return /^\d{1,15}$/.test(text) && Number(text) >= least;
}

// The server's error, told in the page's terms where it knows more.
function explain(query, error) {
  if (query.kind === 'id' && error.status === 404) {
    return new ApiError(
      `The collection “${query.c}” has no image #${query.value}: it may have been removed, or `
      + 'the link is wrong.',
      error.code,
      error.status,
    );
  }
  return error;
}

// Images under /v1 need the API key when the server has keys, which <img src> cannot send:
// then they are fetched with the key once they come near the screen.
const lazyLoader = 'IntersectionObserver' in window
  ? new IntersectionObserver((seen) => {
    for (const entry of seen) {
      if (entry.isIntersecting) {
        lazyLoader.unobserve(entry.target);
        loadWithKey(entry.target);
      }
    }
  }, { rootMargin: '300px' })
  : null;

function isOwn(url) {
  return new URL(url, location.href).origin === location.origin;
}

function setImage(img, url) {
  img.removeAttribute('src');
  if (!url) return;
  if (!apiKey() || !isOwn(url)) {
    img.src = url;
    return;
  }
  img.dataset.src = url;
  if (lazyLoader) lazyLoader.observe(img);
  else loadWithKey(img);
}

async function loadWithKey(img) {
  const url = img.dataset.src;
  try {
    const response = await fetch(url, { headers: withKey() });
    if (!response.ok) return;
    const blob = await response.blob();
    if (img.dataset.src !== url) return; // reused for another image meanwhile
    img.src = URL.createObjectURL(blob);
    img.addEventListener('load', () => URL.revokeObjectURL(img.src), { once: true });
  } catch {
    // leave the image empty
  }
}

// ---- collections ---------------------------------------------------------------------------

async function loadCollections() {
  const { collections } = await api('/v1/collections');
  state.collections = collections;
  els.collection.replaceChildren(
    ...collections.map((c) => new Option(`${c.name} (${c.count})`, c.name)),
  );
  els.collection.hidden = collections.length < 2;
  if (!collections.length) {
    els.empty.textContent = 'This server serves no collections yet.';
  }
}

// Selects the collection called `name` (or keeps the current one when no name is given);
// returns false for a name this server does not serve.
function selectCollection(name) {
  const found = state.collections.find((c) => c.name === name);
  state.current = found || state.current || state.collections[0] || null;
  showCollection(state.current);
  return !name || Boolean(found);
}

function unknownCollection(name) {
  const names = state.collections.map((c) => `“${c.name}”`).join(', ');
  return new ApiError(
    `This link names the collection “${name}”, which this server does not serve`
    + `${names ? `; it serves ${names}` : ''}.`,
    'not_found',
    404,
  );
}

function showCollection(c) {
  if (!c) return;
  els.collection.value = c.name;
  els.collectionName.textContent = c.name;
  els.collectionName.hidden = !els.collection.hidden;
  const images = `${c.count.toLocaleString()} image${c.count === 1 ? '' : 's'}`;
  els.collectionInfo.textContent = `${images} · ${c.model}`;
  els.collectionInfo.title = `${images}, model ${c.model}, ${c.dim} dimensions, ${c.index} index`;
  els.textInput.disabled = !c.supports_text;
  els.textButton.disabled = !c.supports_text;
  els.textInput.placeholder = c.supports_text ? 'Describe an image…' : 'Text search is off';
  els.textHint.hidden = c.supports_text;
  els.textHint.textContent = c.supports_text
    ? ''
    : `This collection's model (${c.model}) embeds images only, so it cannot search by text.`;
}

// ---- searching and history -----------------------------------------------------------------

function pageUrl(query) {
  const params = new URLSearchParams();
  if (query.c) params.set('c', query.c);
  if (LINKABLE.includes(query.kind)) params.set(query.kind, String(query.value));
  if (query.kind && query.k !== DEFAULT_K) params.set('k', String(query.k));
  const search = params.toString();
  return `${location.pathname}${search ? `?${search}` : ''}`;
}

function queryFromPage() {
  const params = new URLSearchParams(location.search);
  const c = params.get('c');
  const raw = params.get('k');
  const k = raw === null ? DEFAULT_K : (isCount(raw) && Number(raw)) || raw; // bad: refused later
  for (const kind of LINKABLE) {
    if (params.has(kind)) return { c, kind, value: params.get(kind), k };
  }
  return { c, kind: null, k };
}

// Results asked for at a time: the page size chosen.
const pageSize = () => Number(els.k.value);

function describe(query) {
  switch (query.kind) {
    case 'id': return `Images like #${query.value}`;
    case 'text': return `“${query.value}”`;
    case 'url': return `Image at ${query.value}`;
    case 'upload': return query.file && query.file.name && query.file.name !== 'image.png'
      ? `Uploaded image: ${query.file.name}`
      : 'Uploaded image';
    default: return '';
  }
}

// Runs a query; `mode` says what it does to the history: push a new entry, replace the
// current one (a reload or a link being re-run), or nothing.
async function search(query, mode = 'push') {
  const key = `e${Date.now()}-${entries++}`;
  const entry = { key, c: query.c, kind: query.kind };
  if (mode === 'push') history.pushState(entry, '', pageUrl(query));
  else if (mode === 'replace') history.replaceState(entry, '', pageUrl(query));
  if (query.kind === 'text') els.textInput.value = query.value;
  if (query.kind === 'url') els.urlInput.value = query.value;

  const seq = ++state.seq;
  state.query = query;
  state.response = null;
  const problem = queryProblem(query);
  if (problem) {
    showFailure(query, problem);
    return;
  }
  showLoading(query);
  try {
    const response = await api(`${collectionPath(query.c)}/search`, searchRequest(query));
    if (seq !== state.seq) return;
    shown.set(key, { query, response });
    render(query, response);
  } catch (error) {
    if (seq !== state.seq) return;
    showFailure(query, explain(query, error));
  }
}

// Asks for the next page of results: the same query with a larger k. The results shown stay
// if that fails, and focus goes to the first new one if it works.
async function loadMore() {
  const { query, response } = state;
  if (!query || !response) return;
  const more = { ...query, k: query.k + pageSize() };
  const seq = ++state.seq;
  const first = response.results.length;
  showLoading(more);
  try {
    const answer = await api(`${collectionPath(more.c)}/search`, searchRequest(more));
    if (seq !== state.seq) return;
    state.query = more;
    const entry = history.state || { key: `e${Date.now()}-${entries++}`, kind: more.kind };
    history.replaceState(entry, '', pageUrl(more));
    shown.set(entry.key, { query: more, response: answer });
    render(more, answer, first);
  } catch (error) {
    if (seq !== state.seq) return;
    render(query, response);
    showError(error);
  }
}

function searchFile(file) {
  if (!state.current) return;
  if (file.type && !file.type.startsWith('image/')) {
    showError(new ApiError(`“${file.name}” is not an image.`, 'not_image'));
    return;
  }
  search({
    c: state.current.name,
    kind: 'upload',
    file,
    preview: URL.createObjectURL(file),
    k: pageSize(),
  });
}

function searchBy(kind, value) {
  if (!state.current) return;
  const text = typeof value === 'string' ? value.trim() : value;
  if (text === '' || text === null || text === undefined) return;
  search({ c: state.current.name, kind, value: text, k: pageSize() });
}

// Shows what the page URL and history entry stand for: from memory when this entry was
// answered before, else by asking again.
function restore(entry) {
  const fromPage = queryFromPage();
  if (!selectCollection(fromPage.c)) {
    clearResults(EMPTY_HINT);
    showError(unknownCollection(fromPage.c));
    return;
  }
  const remembered = entry && shown.get(entry.key);
  if (remembered) {
    state.seq++;
    state.query = remembered.query;
    showInInputs(remembered.query);
    render(remembered.query, remembered.response);
  } else if (fromPage.kind && state.current) {
    showInInputs(fromPage);
    search({ ...fromPage, c: state.current.name }, 'replace');
  } else {
    clearResults(entry && entry.kind === 'upload'
      ? 'The uploaded image is not kept in the page link: upload it again to search.'
      : EMPTY_HINT);
  }
}

// The text and URL fields show the query walked back or forward to, or nothing.
function showInInputs(query) {
  els.textInput.value = query.kind === 'text' ? query.value : '';
  els.urlInput.value = query.kind === 'url' ? query.value : '';
  const k = String(query.k);
  if ([...els.k.options].some((option) => option.value === k)) els.k.value = k;
}

// ---- rendering -----------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function showLoading(query) {
  els.main.dataset.state = 'loading';
  els.error.hidden = true;
  els.summary.hidden = false;
  els.queryLabel.textContent = describe(query);
  els.stats.textContent = 'Searching…';
  els.stats.classList.add('spinner');
  els.results.classList.add('busy');
  els.results.setAttribute('aria-busy', 'true');
  els.more.disabled = true;
  setExports(false);
  showPreview(query);
}

function showPreview(query) {
  els.previewButton.hidden = !(query.kind === 'upload' || query.kind === 'id');
  els.previewButton.disabled = query.kind !== 'id';
  els.previewButton.title = query.kind === 'id' ? `Details of #${query.value}` : '';
  if (query.kind === 'upload') setImage(els.preview, query.preview);
  else if (query.kind === 'id') {
    setImage(els.preview, `${collectionPath(query.c)}/items/${Number(query.value)}/thumbnail`);
  }
}

function endLoading(stateName) {
  els.main.dataset.state = stateName;
  els.stats.classList.remove('spinner');
  els.results.classList.remove('busy');
  els.results.removeAttribute('aria-busy');
  els.more.disabled = false;
}

// Shows a query's results. Focus goes to result `focus` when given, or to the first result
// when it was on one of the results replaced (a click on a result, say), so it is not lost.
function render(query, response, focus = null) {
  const refocus = focus ?? (els.results.contains(document.activeElement) ? 0 : null);
  state.response = response;
  endLoading('done');
  els.error.hidden = true;
  els.summary.hidden = false;
  els.queryLabel.textContent = describe(query);
  showPreview(query);
  const n = response.results.length;
  els.stats.textContent = `${n} result${n === 1 ? '' : 's'} · ${formatMs(response.took_ms)}`;
  els.results.replaceChildren(...response.results.map(card));
  els.empty.hidden = n > 0;
  els.empty.textContent = 'No images matched.';
  setExports(n > 0);
  // a full page may have more behind it; fewer than asked means that was all
  const total = state.current && state.current.name === query.c ? state.current.count : Infinity;
  els.more.hidden = n < query.k || n >= total;
  els.more.textContent = `Show ${pageSize()} more`;
  if (refocus !== null) focusCard(refocus);
}

// Says why a query got no results: in the error box, with no results or preview left over.
function showFailure(query, error) {
  const hadFocus = els.results.contains(document.activeElement);
  endLoading('error');
  els.results.replaceChildren();
  els.more.hidden = true;
  els.summary.hidden = false;
  els.previewButton.hidden = true;
  els.queryLabel.textContent = describe(query);
  els.stats.textContent = 'Search failed';
  els.empty.hidden = true;
  setExports(false);
  if (error.status === 401) return; // the key prompt says it
  showError(error);
  if (hadFocus) els.error.focus();
}

function showError(error) {
  els.error.replaceChildren(
    el('strong', { textContent: 'Error: ' }),
    el('span', { className: 'error-message', textContent: error.message }),
    error.code ? el('span', { className: 'error-code', textContent: ` (${error.code})` }) : '',
  );
  els.error.hidden = false;
}

function clearResults(hint) {
  state.seq++;
  state.query = null;
  state.response = null;
  endLoading('idle');
  els.summary.hidden = true;
  els.results.replaceChildren();
  els.more.hidden = true;
  els.empty.textContent = hint;
  els.empty.hidden = false;
  setExports(false);
}

function formatMs(ms) {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

function caption(metadata) {
  for (const key of CAPTION_KEYS) {
    if (typeof metadata[key] === 'string' && metadata[key]) return metadata[key];
  }
  return '';
}

// The file a hit came from: its path relative to the indexed folder where the server shows
// paths, else its file name; folders and name on lines of their own, so both stay in sight.
function fileLine(hit) {
  const where = hit.path || hit.name;
  if (!where) return '';
  const cut = where.lastIndexOf('/') + 1;
  return el(
    'p',
    { className: 'file', title: where },
    cut ? el('span', { className: 'dir', textContent: where.slice(0, cut) }) : '',
    el('span', { className: 'base', textContent: where.slice(cut) }),
  );
}

function card(hit) {
  const label = caption(hit.metadata) || hit.name;
  const img = el('img', {
    alt: label || `Image #${hit.id}`,
    loading: 'lazy',
    decoding: 'async',
  });
  setImage(img, hit.thumbnail_url);
  const open = el('button', {
    type: 'button',
    className: 'thumb',
    title: `Find images like #${hit.id}`,
  }, img);
  open.setAttribute('aria-label', `Find images like #${hit.id}${label ? ` (${label})` : ''}`);
  open.addEventListener('click', () => searchBy('id', hit.id));

  const more = el('button', { type: 'button', className: 'details-button', textContent: 'Details' });
  more.setAttribute('aria-label', `Details of #${hit.id}`);
  more.addEventListener('click', () => openDetails(hit.id, hit.score));

  const info = el(
    'div',
    { className: 'card-info' },
    el('span', {
      className: 'score',
      textContent: hit.score.toFixed(3),
      title: 'similarity score',
    }),
    el('span', { className: 'id muted', textContent: `#${hit.id}` }),
    more,
  );
  const item = el('li', { className: 'card' }, open, info);
  if (label && label !== hit.name) {
    item.append(el('p', { className: 'caption', textContent: label, title: label }));
  }
  item.append(fileLine(hit));
  item.dataset.id = hit.id;
  return item;
}

function focusCard(index) {
  const cards = els.results.children;
  if (!cards.length) return;
  cards[Math.max(0, Math.min(index, cards.length - 1))].querySelector('.thumb').focus();
}

// Arrow keys move between result cards (up and down by a row of the grid), Home and End to
// the first and last; focus stays on the same control of the card reached.
function moveInResults(event) {
  const card = event.target.closest('.card');
  if (!card || event.altKey || event.ctrlKey || event.metaKey) return;
  const cards = [...els.results.children];
  const index = cards.indexOf(card);
  const columns = cards.filter((c) => c.offsetTop === cards[0].offsetTop).length || 1;
  const lastRow = Math.floor((cards.length - 1) / columns);
  const down = Math.floor(index / columns) < lastRow
    ? Math.min(index + columns, cards.length - 1)
    : index;
  const to = {
    ArrowRight: Math.min(index + 1, cards.length - 1),
    ArrowLeft: Math.max(index - 1, 0),
    ArrowDown: down,
    ArrowUp: index >= columns ? index - columns : index,
    Home: 0,
    End: cards.length - 1,
  }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  const control = event.target.classList.contains('details-button') ? '.details-button' : '.thumb';
  cards[to].querySelector(control).focus();
}

function setExports(enabled) {
  els.exportJson.disabled = !enabled;
  els.exportCsv.disabled = !enabled;
}

// ---- details -------------------------------------------------------------------------------

async function openDetails(id, score) {
  const c = state.current;
  state.detailsId = id;
  els.detailsTitle.textContent = `Image #${id}`;
  els.detailsFacts.replaceChildren(el('dt', { textContent: 'Loading…' }));
  els.detailsMetadata.replaceChildren();
  els.detailsNoMetadata.hidden = true;
  els.detailsImage.removeAttribute('src');
  els.detailsLink.removeAttribute('href');
  if (!els.details.open) els.details.showModal();
  let item;
  try {
    item = await api(`${collectionPath(c.name)}/items/${id}`);
  } catch (error) {
    els.detailsFacts.replaceChildren(el('dd', { className: 'error-text', textContent: error.message }));
    return;
  }
  if (state.detailsId !== id) return;
  setImage(els.detailsImage, item.thumbnail_url);
  els.detailsImage.alt = caption(item.metadata) || item.name || `Image #${id}`;
  const facts = [];
  if (item.name) facts.push(['File', item.name]);
  if (item.path) facts.push(['Path', item.path]);
  facts.push(['Size', `${item.width} × ${item.height} px`]);
  if (score !== undefined) facts.push(['Score', score.toFixed(4)]);
  facts.push(['Collection', c.name]);
  els.detailsFacts.replaceChildren(
    ...facts.flatMap(([term, value]) => [el('dt', { textContent: term }), el('dd', { textContent: value })]),
  );
  const rows = Object.entries(item.metadata || {});
  els.detailsMetadata.replaceChildren(...rows.map(([key, value]) => el(
    'tr',
    {},
    el('th', { scope: 'row', textContent: key }),
    el('td', { textContent: typeof value === 'string' ? value : JSON.stringify(value) }),
  )));
  els.detailsNoMetadata.hidden = rows.length > 0;
  els.detailsLink.href = item.url;
}

async function openFullImage(event) {
  const url = els.detailsLink.href;
  if (!url || !apiKey() || !isOwn(url)) return; // the link works as it is
  event.preventDefault();
  const tab = window.open('', '_blank');
  try {
    const response = await fetch(url, { headers: withKey() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    if (tab) tab.location = URL.createObjectURL(blob);
  } catch (error) {
    if (tab) tab.close();
    showError(new ApiError(`Could not open the image: ${error.message}`, 'image'));
  }
}

// ---- export --------------------------------------------------------------------------------

function exportRows() {
  const absolute = (url) => (url ? new URL(url, location.href).href : url);
  return state.response.results.map((hit) => ({
    ...hit,
    url: absolute(hit.url),
    thumbnail_url: absolute(hit.thumbnail_url),
  }));
}

function exportName(ext) {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  return `lookalike-${state.query.c}-${stamp}.${ext}`;
}

function download(name, type, text) {
  const link = el('a', { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function exportJson() {
  const { query, response } = state;
  const described = LINKABLE.includes(query.kind) ? { [query.kind]: query.value } : { image: 'upload' };
  const data = {
    collection: query.c,
    query: described,
    model: response.model,
    took_ms: response.took_ms,
    results: exportRows(),
  };
  download(exportName('json'), 'application/json', `${JSON.stringify(data, null, 2)}\n`);
}

function csvCell(value) {
  if (value === null || value === undefined) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const CSV_FIELDS = ['id', 'score', 'name', 'path', 'width', 'height', 'url', 'thumbnail_url'];

function exportCsv() {
  const rows = exportRows();
  const metaKeys = [...new Set(rows.flatMap((r) => Object.keys(r.metadata || {})))].sort();
  // a metadata key named like a column of its own (name, url…) is told apart by a prefix
  const metaColumns = metaKeys.map(
    (key) => (key === 'rank' || CSV_FIELDS.includes(key) ? `metadata.${key}` : key),
  );
  const header = ['rank', ...CSV_FIELDS, ...metaColumns];
  const lines = rows.map((r, i) => [
    i + 1,
    ...CSV_FIELDS.map((field) => r[field]),
    ...metaKeys.map((key) => (r.metadata || {})[key]),
  ].map(csvCell).join(','));
  download(exportName('csv'), 'text/csv', `${[header.join(','), ...lines].join('\r\n')}\r\n`);
}

// ---- API key -------------------------------------------------------------------------------

function askForKey() {
  els.keyMessage.textContent = apiKey()
    ? 'The server refused the saved API key. Enter another one.'
    : 'This server needs an API key.';
  els.keyForm.hidden = false;
  els.keyInput.focus();
}

// ---- wiring --------------------------------------------------------------------------------

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

function imageFile(list) {
  return [...(list || [])].find((file) => file.type.startsWith('image/'));
}

function wire() {
  els.file.addEventListener('change', () => {
    const file = els.file.files[0];
    els.file.value = ''; // so choosing the same file again searches again
    if (file) searchFile(file);
  });
  els.urlForm.addEventListener('submit', (event) => {
    event.preventDefault();
    searchBy('url', els.urlInput.value);
  });
  els.textForm.addEventListener('submit', (event) => {
    event.preventDefault();
    searchBy('text', els.textInput.value);
  });
  els.collection.addEventListener('change', () => {
    selectCollection(els.collection.value);
    const q = state.query;
    if (q && (q.kind === 'text' || q.kind === 'url' || q.kind === 'upload')) {
      search({ ...q, c: state.current.name });
    } else {
      history.pushState({ key: `e${Date.now()}-${entries++}` }, '', pageUrl({ c: state.current.name }));
      clearResults(EMPTY_HINT);
    }
  });
  els.k.addEventListener('change', () => {
    const q = state.query;
    if (q && q.kind) search({ ...q, k: pageSize() }, 'replace');
  });
  els.more.addEventListener('click', loadMore);
  els.results.addEventListener('keydown', moveInResults);
  document.addEventListener('keydown', (event) => {
    // `/` goes to the search box, as on many sites, unless one is typing already
    if (event.key !== '/' || event.ctrlKey || event.metaKey || event.altKey) return;
    if (isTyping(event.target) || els.details.open) return;
    event.preventDefault();
    const box = els.textInput.disabled ? els.urlInput : els.textInput;
    box.focus();
    box.select();
  });
  els.previewButton.addEventListener('click', () => {
    if (state.query && state.query.kind === 'id') openDetails(Number(state.query.value));
  });
  els.exportJson.addEventListener('click', exportJson);
  els.exportCsv.addEventListener('click', exportCsv);
  els.detailsLink.addEventListener('click', openFullImage);
  els.detailsSimilar.addEventListener('click', () => {
    els.details.close();
    searchBy('id', state.detailsId);
  });
  els.details.addEventListener('click', (event) => {
    if (event.target === els.details) els.details.close(); // a click on the backdrop
  });
  els.keyForm.addEventListener('submit', (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, els.keyInput.value.trim());
    els.keyInput.value = '';
    els.keyForm.hidden = true;
    start();
  });

  // drag and drop an image file (or an image from another page) anywhere
  let depth = 0;
  const dragsSomething = (event) => [...event.dataTransfer.types].some(
    (type) => type === 'Files' || type === 'text/uri-list',
  );
  document.addEventListener('dragenter', (event) => {
    if (!dragsSomething(event)) return;
    depth++;
    els.dropOverlay.hidden = false;
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) els.dropOverlay.hidden = true;
  });
  document.addEventListener('dragover', (event) => {
    if (dragsSomething(event)) event.preventDefault();
  });
  document.addEventListener('drop', (event) => {
    depth = 0;
    els.dropOverlay.hidden = true;
    const file = imageFile(event.dataTransfer.files);
    const url = (event.dataTransfer.getData('text/uri-list') || '').split('\n')[0].trim();
    if (!file && !/^https?:\/\//.test(url)) return;
    event.preventDefault();
    if (file) searchFile(file);
    else searchBy('url', url);
  });

  // paste an image (or an image URL outside the inputs)
  document.addEventListener('paste', (event) => {
    const file = imageFile(event.clipboardData && event.clipboardData.files);
    if (file) {
      event.preventDefault();
      searchFile(file);
      return;
    }
    const text = event.clipboardData ? event.clipboardData.getData('text').trim() : '';
    if (!isTyping(event.target) && /^https?:\/\/\S+$/.test(text)) {
      event.preventDefault();
      searchBy('url', text);
    }
  });

  window.addEventListener('popstate', (event) => {
    if (els.details.open) els.details.close();
    restore(event.state);
  });
}

async function start() {
  els.error.hidden = true;
  try {
    await loadCollections();
  } catch (error) {
    if (error.status !== 401) showError(error);
    return;
  }
  restore(history.state);
}

wire();
start();
