// The lookalike search page: query a collection by image, URL, text or a result's id.
// The query lives in the page URL (?c=NAME&id=|text=|url=[&k=][&rel=&irr=][&tag=&xtag=][&div=]),
// so searches (with their relevance marks and tag filters) can be shared and the back button
// walks the trail of clicks.

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
  diverse: $('#diverse'),
  tagChips: $('#tag-chips'),
  tagOffers: $('#tag-offers'),
  tagList: $('#tag-list'),
  feedback: $('#feedback'),
  marks: $('#marks'),
  nextRound: $('#next-round'),
  clearMarks: $('#clear-marks'),
  count: $('#count'),
  selectionBar: $('#selection-bar'),
  selectedCount: $('#selected-count'),
  likeThese: $('#like-these'),
  unlikeThese: $('#unlike-these'),
  tagSelection: $('#tag-selection'),
  exportSelectionJson: $('#export-selection-json'),
  exportSelectionCsv: $('#export-selection-csv'),
  clearSelection: $('#clear-selection'),
};
const EMPTY_HINT = els.empty.textContent.trim();

const state = {
  collections: [],
  current: null, // the selected collection
  query: null, // the query shown: {c, kind, value, file?, preview?}
  response: null, // its search response, once answered
  seq: 0, // number of the latest request; answers to older ones are dropped
  detailsId: null,
  marks: { rel: new Set(), irr: new Set() }, // relevance marks, sent by the next round
  filters: { tags: [], xtags: [] }, // tags required and excluded by the searches
  selected: new Set(), // ids of the results picked for a bulk action
  lastPicked: null, // index of the result picked last, where a shift-click range starts
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

// The search options beyond the query itself: marks, tag filters and diversity, as API fields.
function searchOptions(query) {
  const options = {};
  if (query.rel && query.rel.length) options.relevant = query.rel;
  if (query.irr && query.irr.length) options.irrelevant = query.irr;
  if (query.tags && query.tags.length) options.tags = query.tags;
  if (query.xtags && query.xtags.length) options.exclude_tags = query.xtags;
  if (query.diverse) options.diverse = query.diverse;
  return options;
}

// The query as a JSON search body (not for uploads), less k.
function queryBody(query) {
  const body = searchOptions(query);
  if (query.kind === 'id') {
    const ids = String(query.value).split(',').map(Number);
    if (ids.length === 1) body.id = ids[0];
    else body.query = ids.map((id) => ({ id })); // "more like these": one part an id
  } else if (query.kind) body[query.kind] = query.value;
  return body;
}

function searchRequest(query) {
  if (query.kind === 'upload') {
    const form = new FormData();
    form.append('image', query.file, query.file.name || 'upload');
    form.append('k', String(query.k));
    for (const [field, value] of Object.entries(searchOptions(query))) {
      form.append(field, typeof value === 'number' ? String(value) : JSON.stringify(value));
    }
    return { method: 'POST', body: form };
  }
  return {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...queryBody(query), k: query.k }),
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
  const ids = [
    ...(query.kind === 'id' ? String(query.value).split(',') : []),
    ...(query.rel || []),
    ...(query.irr || []),
  ];
  const bad = ids.find((id) => !isCount(id, 0));
  if (bad !== undefined) {
    return new ApiError(
      `“${bad}” is not an image id: ids are whole numbers, like 3.`,
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
  if (query.kind === 'id' && !String(query.value).includes(',') && error.status === 404) {
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
  if (runnable(query) && query.k !== DEFAULT_K) params.set('k', String(query.k));
  if (query.rel && query.rel.length) params.set('rel', query.rel.join(','));
  if (query.irr && query.irr.length) params.set('irr', query.irr.join(','));
  for (const tag of query.tags || []) params.append('tag', tag);
  for (const tag of query.xtags || []) params.append('xtag', tag);
  if (query.diverse) params.set('div', String(query.diverse));
  const search = params.toString();
  return `${location.pathname}${search ? `?${search}` : ''}`;
}

function queryFromPage() {
  const params = new URLSearchParams(location.search);
  const c = params.get('c');
  const raw = params.get('k');
  const k = raw === null ? DEFAULT_K : (isCount(raw) && Number(raw)) || raw; // bad: refused later
  const ids = (name) => (params.get(name) || '').split(',').filter(Boolean)
    .map((id) => (isCount(id, 0) ? Number(id) : id)); // bad: refused later
  const options = {
    rel: ids('rel'),
    irr: ids('irr'),
    tags: params.getAll('tag'),
    xtags: params.getAll('xtag'),
    diverse: Number(params.get('div')) || 0,
  };
  const kind = LINKABLE.find((name) => params.has(name)) || null;
  return { c, kind, value: kind ? params.get(kind) : undefined, k, ...options };
}

// Whether a query has something to search by: an image, text or ids, or relevance marks.
function runnable(query) {
  return Boolean(query && (query.kind || (query.rel && query.rel.length)));
}

// Results asked for at a time: the page size chosen.
const pageSize = () => Number(els.k.value);

function describe(query) {
  switch (query.kind) {
    case 'id': return `Images like ${String(query.value).split(',').map((id) => `#${id}`).join(', ')}`;
    case 'text': return `“${query.value}”`;
    case 'url': return `Image at ${query.value}`;
    case 'upload': return query.file && query.file.name && query.file.name !== 'image.png'
      ? `Uploaded image: ${query.file.name}`
      : 'Uploaded image';
    default: return runnable(query) ? 'Images like the ones marked ✓' : '';
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
  setMarks(query);
  showOptions(query);

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
    showCount(query, response, seq);
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
    history.replaceState(entry, '', markedUrl(more));
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
    ...chosenOptions(),
  });
}

function searchBy(kind, value) {
  if (!state.current) return;
  const text = typeof value === 'string' ? value.trim() : value;
  if (text === '' || text === null || text === undefined) return;
  search({ c: state.current.name, kind, value: text, k: pageSize(), ...chosenOptions() });
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
  loadTags();
  const remembered = entry && shown.get(entry.key);
  showOptions(fromPage);
  setMarks(fromPage); // the marks in the link: those sent, and any made since
  if (remembered) {
    state.seq++;
    state.query = remembered.query;
    showInInputs(remembered.query);
    render(remembered.query, remembered.response);
    showCount(remembered.query, remembered.response, state.seq);
  } else if (runnable(fromPage) && state.current) {
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
  els.previewButton.title = query.kind === 'id' ? `Details of #${String(query.value).split(',')[0]}` : '';
  if (query.kind === 'upload') setImage(els.preview, query.preview);
  else if (query.kind === 'id') {
    const first = Number(String(query.value).split(',')[0]); // of "more like these": the first
    setImage(els.preview, `${collectionPath(query.c)}/items/${first}/thumbnail`);
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
  const ids = new Set(response.results.map((hit) => hit.id));
  state.selected = new Set([...state.selected].filter((id) => ids.has(id)));
  state.lastPicked = null;
  showMarks();
  showSelection();
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
  state.selected.clear();
  showSelection();
  els.count.textContent = '';
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
  state.selected.clear();
  showSelection();
  showMarks();
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
  open.addEventListener('click', (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey) pick(hit.id, event.shiftKey, true);
    else searchBy('id', hit.id);
  });

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
  const item = el('li', { className: 'card' }, open, info, cardMarks(hit.id));
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
  const control = ['.details-button', '.pick input', '.mark-rel', '.mark-irr']
    .find((selector) => event.target.matches(selector)) || '.thumb';
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

// The results shown (or those of them picked, given ids), with absolute links.
function exportRows(ids = null) {
  const absolute = (url) => (url ? new URL(url, location.href).href : url);
  const hits = state.response.results.filter((hit) => !ids || ids.has(hit.id));
  return hits.map((hit) => ({
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

function exportJson(ids = null) {
  const { query, response } = state;
  const described = LINKABLE.includes(query.kind) ? { [query.kind]: query.value } : { image: 'upload' };
  const data = {
    collection: query.c,
    query: described,
    model: response.model,
    took_ms: response.took_ms,
    ...searchOptions(query),
    results: exportRows(ids),
  };
  download(exportName('json'), 'application/json', `${JSON.stringify(data, null, 2)}\n`);
}

function csvCell(value) {
  if (value === null || value === undefined) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const CSV_FIELDS = ['id', 'score', 'name', 'path', 'width', 'height', 'url', 'thumbnail_url'];

function exportCsv(ids = null) {
  const rows = exportRows(ids);
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

// ---- curation: relevance marks, tag filters, diversity, selection, counts -----------------

// The options the controls hold, for a new query: no marks yet.
function chosenOptions() {
  return {
    rel: [],
    irr: [],
    tags: [...state.filters.tags],
    xtags: [...state.filters.xtags],
    diverse: Number(els.diverse.value) || 0,
  };
}

// The controls show a query's tag filters and diversity.
function showOptions(query) {
  state.filters = { tags: [...(query.tags || [])], xtags: [...(query.xtags || [])] };
  const diverse = String(query.diverse || 0);
  if (![...els.diverse.options].some((option) => option.value === diverse)) {
    els.diverse.append(new Option(diverse, diverse)); // a link's own value
  }
  els.diverse.value = diverse;
  showChips();
}

function setMarks(query) {
  state.marks = { rel: new Set(query.rel || []), irr: new Set(query.irr || []) };
  showMarks();
}

// The page URL for a query with the marks made so far (sent or not), so reload, back and
// a shared link keep them.
function markedUrl(query) {
  return pageUrl({ ...query, rel: [...state.marks.rel], irr: [...state.marks.irr] });
}

function rememberMarks() {
  if (state.query) history.replaceState(history.state, '', markedUrl(state.query));
}

// Marks a result relevant (`side` 'rel') or irrelevant ('irr'), or unmarks it.
function toggleMark(id, side) {
  const other = side === 'rel' ? 'irr' : 'rel';
  if (state.marks[side].has(id)) state.marks[side].delete(id);
  else {
    state.marks[side].add(id);
    state.marks[other].delete(id);
  }
  rememberMarks();
  showMarks();
}

function showMarks() {
  const { rel, irr } = state.marks;
  els.marks.textContent = `${rel.size} ✓ · ${irr.size} ✗`;
  els.feedback.hidden = !state.query || !(rel.size || irr.size); // shown once one is marked
  els.nextRound.disabled = !(rel.size || irr.size) || !state.query;
  els.clearMarks.disabled = !(rel.size || irr.size);
  for (const item of els.results.children) {
    const id = Number(item.dataset.id);
    item.classList.toggle('marked-rel', rel.has(id));
    item.classList.toggle('marked-irr', irr.has(id));
    item.querySelector('.mark-rel').setAttribute('aria-pressed', String(rel.has(id)));
    item.querySelector('.mark-irr').setAttribute('aria-pressed', String(irr.has(id)));
  }
}

// Searches again: the query with the marks made and the options chosen (marked ids leave).
function nextRound() {
  const base = state.query;
  if (!base) return;
  search({
    ...base,
    ...chosenOptions(),
    k: pageSize(),
    rel: [...state.marks.rel],
    irr: [...state.marks.irr],
  });
}

function cardMarks(id) {
  const box = el('input', { type: 'checkbox' });
  box.setAttribute('aria-label', `Select #${id}`);
  box.addEventListener('click', (event) => {
    event.preventDefault(); // pick() sets it, so shift-click ranges stay in step
    pick(id, event.shiftKey);
  });
  const rel = el('button', { type: 'button', className: 'mark mark-rel', textContent: '✓' });
  rel.setAttribute('aria-label', `Mark #${id} relevant`);
  rel.title = 'relevant';
  rel.addEventListener('click', () => toggleMark(id, 'rel'));
  const irr = el('button', { type: 'button', className: 'mark mark-irr', textContent: '✗' });
  irr.setAttribute('aria-label', `Mark #${id} irrelevant`);
  irr.title = 'irrelevant';
  irr.addEventListener('click', () => toggleMark(id, 'irr'));
  return el(
    'div',
    { className: 'card-marks' },
    el('label', { className: 'pick', title: 'select (shift: a range)' }, box),
    rel,
    irr,
  );
}

// Selects or unselects a result; `range` selects every result from the one picked last.
function pick(id, range = false, fromThumb = false) {
  const ids = [...els.results.children].map((item) => Number(item.dataset.id));
  const index = ids.indexOf(id);
  if (range && state.lastPicked !== null) {
    const [from, to] = [state.lastPicked, index].sort((a, b) => a - b);
    for (const each of ids.slice(from, to + 1)) state.selected.add(each);
  } else if (state.selected.has(id)) state.selected.delete(id);
  else state.selected.add(id);
  state.lastPicked = index;
  showSelection();
  if (fromThumb) els.results.children[index].querySelector('.thumb').focus();
}

function showSelection() {
  const n = state.selected.size;
  els.selectionBar.hidden = n === 0;
  els.selectedCount.textContent = `${n} selected`;
  for (const item of els.results.children) {
    const on = state.selected.has(Number(item.dataset.id));
    item.classList.toggle('selected', on);
    item.querySelector('.pick input').checked = on;
  }
}

function clearSelection() {
  state.selected.clear();
  state.lastPicked = null;
  showSelection();
}

// "Unlike these": the selection marked irrelevant, and the next round run.
function unlikeSelection() {
  for (const id of state.selected) {
    state.marks.irr.add(id);
    state.marks.rel.delete(id);
  }
  state.selected.clear();
  nextRound();
}

async function tagSelection() {
  const ids = [...state.selected];
  const tag = (window.prompt(`Tag the ${ids.length} selected image(s) with:`) || '').trim();
  if (!tag || !state.query) return;
  try {
    const { tagged } = await api(`${collectionPath(state.query.c)}/tags`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ tag, ids }),
    });
    els.stats.textContent = `Tagged ${tagged} image${tagged === 1 ? '' : 's'} “${tag}”`;
    await loadTags();
  } catch (error) {
    showError(error);
  }
}

// The collection's tags with their counts, offered as filters.
async function loadTags() {
  const c = state.current;
  if (!c) return;
  let tags;
  try {
    ({ tags } = await api(`${collectionPath(c.name)}/tags`));
  } catch {
    tags = {}; // an older server, or no access: no tags offered
  }
  if (state.current !== c) return;
  state.tagCounts = tags;
  showChips();
}

function chip(text, label, onClick, className = 'chip') {
  const button = el('button', { type: 'button', className, textContent: text });
  button.setAttribute('aria-label', label);
  button.addEventListener('click', onClick);
  return el('li', {}, button);
}

// The tag filters in force (click to drop one) and the collection's tags (require, exclude).
function showChips() {
  const { tags, xtags } = state.filters;
  els.tagChips.replaceChildren(
    ...tags.map((tag) => chip(`has ${tag} ×`, `Stop requiring tag ${tag}`, () => setFilter('tags', tag, false), 'chip need')),
    ...xtags.map((tag) => chip(`not ${tag} ×`, `Stop excluding tag ${tag}`, () => setFilter('xtags', tag, false), 'chip skip')),
  );
  const offered = Object.entries(state.tagCounts || {});
  els.tagOffers.hidden = offered.length === 0;
  els.tagList.replaceChildren(...offered.map(([tag, n]) => {
    const item = el(
      'li',
      { className: 'tag-offer' },
      el('span', { className: 'tag-name', textContent: tag }),
      el('span', { className: 'tag-count muted', textContent: String(n) }),
    );
    item.dataset.tag = tag;
    const need = el('button', { type: 'button', className: 'tag-need', textContent: '+' });
    need.setAttribute('aria-label', `Only images tagged ${tag}`);
    need.title = 'only images with this tag';
    need.disabled = tags.includes(tag);
    need.addEventListener('click', () => setFilter('tags', tag, true));
    const skip = el('button', { type: 'button', className: 'tag-skip', textContent: '−' });
    skip.setAttribute('aria-label', `Exclude images tagged ${tag}`);
    skip.title = 'leave out images with this tag';
    skip.disabled = xtags.includes(tag);
    skip.addEventListener('click', () => setFilter('xtags', tag, true));
    item.append(need, skip);
    return item;
  }));
}

// Adds or drops a tag filter, and runs the query shown again with it.
function setFilter(which, tag, on) {
  const other = which === 'tags' ? 'xtags' : 'tags';
  state.filters[which] = state.filters[which].filter((t) => t !== tag);
  state.filters[other] = state.filters[other].filter((t) => t !== tag);
  if (on) state.filters[which].push(tag);
  showChips();
  if (runnable(state.query)) nextRound();
}

// "≈ N (low–high)" or "N exact": how many images score at least the last result's score.
async function showCount(query, response, seq) {
  els.count.textContent = '';
  const last = response.results[response.results.length - 1];
  if (!last || query.kind === 'upload') return; // an upload is not sent twice
  const minScore = Math.max(-1, Math.floor(last.score * 1000) / 1000);
  let counted;
  try {
    counted = await api(`${collectionPath(query.c)}/count`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ ...queryBody(query), min_score: minScore }),
    });
  } catch {
    return; // the results stand without a count
  }
  if (seq !== state.seq) return;
  const n = (value) => Math.round(value).toLocaleString();
  const how = counted.exact
    ? `${n(counted.estimate)} exact`
    : `≈ ${n(counted.estimate)} (${n(counted.low)}–${n(counted.high)})`;
  els.count.textContent = `${how} score ≥ ${minScore.toFixed(3)}`;
  els.count.title = `images scoring at least ${minScore} for this query, of ${n(counted.total)}`;
}

function wireCuration() {
  els.nextRound.addEventListener('click', nextRound);
  els.clearMarks.addEventListener('click', () => {
    state.marks = { rel: new Set(), irr: new Set() };
    rememberMarks();
    showMarks();
  });
  els.diverse.addEventListener('change', () => {
    if (runnable(state.query)) nextRound();
  });
  els.likeThese.addEventListener('click', () => searchBy('id', [...state.selected].join(',')));
  els.unlikeThese.addEventListener('click', unlikeSelection);
  els.tagSelection.addEventListener('click', tagSelection);
  els.exportSelectionJson.addEventListener('click', () => exportJson(state.selected));
  els.exportSelectionCsv.addEventListener('click', () => exportCsv(state.selected));
  els.clearSelection.addEventListener('click', clearSelection);
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
    state.filters = { tags: [], xtags: [] }; // tags belong to a collection
    loadTags();
    const q = state.query;
    if (q && (q.kind === 'text' || q.kind === 'url' || q.kind === 'upload')) {
      search({ ...q, c: state.current.name, ...chosenOptions() });
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
    if (state.query && state.query.kind === 'id') {
      openDetails(Number(String(state.query.value).split(',')[0]));
    }
  });
  els.exportJson.addEventListener('click', () => exportJson());
  els.exportCsv.addEventListener('click', () => exportCsv());
  wireCuration();
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
