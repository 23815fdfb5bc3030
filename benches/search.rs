//! Search benchmark (issue "consumers, search, registry"), run by `scripts/bench` against its
//! private PostgreSQL and tansu. Prints, on this machine:
//!
//! (a) indexer throughput into the embedded index: 50 000 Debezium change events of
//!     documents (≈ 0.6 KiB of Russian clinical text each) waiting in the topic, consumed by
//!     the real `ConsumerActor` + `SearchIndexer`, until every one is searchable — events/s
//!     from the first batch received, and including the consumer group's join (target
//!     ≥ 5 000/s);
//! (b) search latency p50/p99 over 100 000 documents (the other 50 000 applied straight to
//!     the index) and 20 000 patients: full-text document queries of two words with
//!     stemming and highlights, and fuzzy name queries with a typo, through the `SearchIndex`
//!     port as the API calls it (target p99 < 50 ms).

#[allow(dead_code)]
#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use futures::future::join_all;
use hdrhistogram::Histogram;
use medflow_actors::bus::topics::ensure_topics;
use medflow_actors::consume::{ConsumerActor, ConsumerStats, Consumers};
use medflow_actors::search::embedded::EmbeddedIndex;
use medflow_actors::search::indexer::{GROUP, SearchIndexer};
use medflow_actors::search::{
    DocumentEntry, IndexOp, Kind, PatientEntry, SearchIndex, SearchQuery,
};
use medflow_supervisors::consumers::ConsumerSupervisor;
use ractor::Actor;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use uuid::Uuid;

const KAFKA_DOCS: usize = 50_000;
const TOTAL_DOCS: usize = 100_000;
const PATIENTS: usize = 20_000;
const QUERIES: usize = 2_000;

const WORDS: &[&str] = &[
    "жалобы",
    "боли",
    "груди",
    "нагрузке",
    "одышка",
    "кашель",
    "температура",
    "слабость",
    "головокружение",
    "давление",
    "артериальное",
    "пульс",
    "ритмичный",
    "тоны",
    "сердца",
    "приглушены",
    "дыхание",
    "везикулярное",
    "хрипов",
    "нет",
    "живот",
    "мягкий",
    "безболезненный",
    "печень",
    "не",
    "увеличена",
    "стул",
    "диурез",
    "в",
    "норме",
    "диагноз",
    "гипертоническая",
    "болезнь",
    "стадии",
    "риск",
    "ишемическая",
    "стенокардия",
    "напряжения",
    "класс",
    "рекомендовано",
    "обследование",
    "анализ",
    "крови",
    "общий",
    "биохимический",
    "мочи",
    "электрокардиограмма",
    "эхокардиография",
    "консультация",
    "кардиолога",
    "невролога",
    "эндокринолога",
    "терапия",
    "назначена",
    "препараты",
    "дозировка",
    "приём",
    "утром",
    "вечером",
    "после",
    "еды",
    "контроль",
    "через",
    "две",
    "недели",
    "повторный",
    "осмотр",
    "состояние",
    "удовлетворительное",
    "средней",
    "тяжести",
    "сознание",
    "ясное",
    "кожные",
    "покровы",
    "обычной",
    "окраски",
    "отёков",
    "периферических",
    "лимфоузлы",
    "щитовидная",
    "железа",
    "сахарный",
    "диабет",
    "типа",
    "глюкоза",
    "холестерин",
    "повышен",
    "снижен",
    "аллергия",
    "отрицает",
    "анамнез",
    "наследственность",
    "отягощена",
    "курение",
    "алкоголь",
    "перенесённые",
    "заболевания",
    "операции",
    "травмы",
    "вакцинация",
    "пневмония",
    "бронхит",
    "гастрит",
    "язва",
    "желудка",
    "панкреатит",
    "остеохондроз",
    "позвоночника",
    "поясничного",
    "отдела",
    "мигрень",
    "бессонница",
    "тревожность",
    "депрессия",
    "ожирение",
    "анемия",
];
const LAST_NAMES: &[&str] = &[
    "Иванова",
    "Смирнов",
    "Кузнецова",
    "Попов",
    "Васильева",
    "Петров",
    "Соколова",
    "Михайлов",
    "Новикова",
    "Фёдоров",
    "Морозова",
    "Волков",
    "Алексеева",
    "Лебедев",
    "Семёнова",
    "Егоров",
    "Павлова",
    "Козлов",
    "Степанова",
    "Николаев",
    "Орлова",
    "Андреев",
    "Макарова",
    "Никитин",
];
const FIRST_NAMES: &[&str] = &[
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Наталья",
    "Иван",
    "Сергей",
    "Алексей",
    "Дмитрий",
    "Андрей",
    "Татьяна",
    "Светлана",
    "Михаил",
    "Николай",
    "Юлия",
    "Артём",
];

/// A deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[(self.next() % list.len() as u64) as usize]
    }

    fn text(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn document(rng: &mut Rng, id: Uuid) -> DocumentEntry {
    DocumentEntry {
        id,
        version: 1,
        patient_id: Uuid::new_v4(),
        author_id: Uuid::new_v4(),
        doc_type: "consultation".into(),
        status: "draft".into(),
        title: format!("Консультация: {}", rng.text(3)),
        body: rng.text(60),
        created_at: Utc::now(),
    }
}

fn main() {
    if std::env::var("MEDFLOW_TEST_DATABASE_URL").is_err() {
        eprintln!("the benchmark needs the private stack: run scripts/bench");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

fn percentile(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1000.0
}

async fn run() {
    let app = helpers::spawn_app_with(|_| {}).await;
    let settings = app.app().settings().clone();
    let kafka = settings.kafka();
    let topic = settings.change_topic("documents");
    ensure_topics(&kafka, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // The change events wait in the topic, as after an outage of the indexer.
    let producer = kafka.reliable_producer().unwrap();
    let started = Instant::now();
    let mut bytes = 0usize;
    for chunk in 0..KAFKA_DOCS / 5_000 {
        let records: Vec<(String, String)> = (0..5_000)
            .map(|_| {
                let d = document(&mut rng, Uuid::new_v4());
                let key = json!({"id": d.id}).to_string();
                let value = json!({
                    "before": null,
                    "after": {"id": d.id, "version": d.version, "patient_id": d.patient_id,
                        "author_id": d.author_id, "doc_type": d.doc_type, "status": d.status,
                        "title": d.title, "body": d.body,
                        "created_at": d.created_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
                    "source": {"table": "documents"}, "op": "c", "ts_ms": 0,
                })
                .to_string();
                (key, value)
            })
            .collect();
        bytes += records.iter().map(|(_, v)| v.len()).sum::<usize>();
        let sends = records.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(&topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for result in join_all(sends).await {
            result.unwrap_or_else(|(error, _)| panic!("produce chunk {chunk}: {error}"));
        }
    }
    println!(
        "produced {KAFKA_DOCS} change events ({:.0} B each) in {:.1} s",
        bytes as f64 / KAFKA_DOCS as f64,
        started.elapsed().as_secs_f64()
    );

    let dir = std::env::temp_dir().join(format!("medflow-bench-search-{}", Uuid::new_v4()));
    let embedded = Arc::new(EmbeddedIndex::open(&dir).unwrap());
    let index: Arc<dyn SearchIndex> = Arc::new(embedded.clone());
    let spec = settings.consumer_spec(GROUP, vec![topic.clone()], settings.consumers.max_batch);
    let stats = Arc::new(ConsumerStats::new(&kafka, &spec));
    let started = Instant::now();
    let (supervisor, _) = Actor::spawn(
        None,
        ConsumerSupervisor {
            children: vec![ConsumerActor {
                spec,
                kafka: kafka.clone(),
                handler: Arc::new(SearchIndexer {
                    index: index.clone(),
                    store: app.app().store().clone(),
                }),
                stats: stats.clone(),
            }],
            consumers: Consumers::default(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        },
        (),
    )
    .await
    .unwrap();
    let mut first_batch = None;
    loop {
        if first_batch.is_none() && stats.consumed.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            first_batch = Some(Instant::now());
        }
        if embedded.entries() >= KAFKA_DOCS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "indexing did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = Instant::now();
    let first_batch = first_batch.unwrap_or(started);
    let from_first = done - first_batch;
    let with_join = done - started;
    println!(
        "(a) indexer, topic → searchable (embedded): {KAFKA_DOCS} events in {:.2} s = {:.0} events/s \
         from the first batch (target ≥ 5 000/s: {:.1}×); {:.0} events/s including the group join ({:.2} s)",
        from_first.as_secs_f64(),
        KAFKA_DOCS as f64 / from_first.as_secs_f64(),
        KAFKA_DOCS as f64 / from_first.as_secs_f64() / 5_000.0,
        KAFKA_DOCS as f64 / with_join.as_secs_f64(),
        with_join.as_secs_f64(),
    );
    supervisor
        .stop_and_wait(None, Some(Duration::from_secs(20)))
        .await
        .unwrap();

    // Fill up to 100 000 documents and add the patients, straight through the port.
    for _ in 0..(TOTAL_DOCS - KAFKA_DOCS) / 5_000 {
        let ops: Vec<IndexOp> = (0..5_000)
            .map(|_| IndexOp::Document(document(&mut rng, Uuid::new_v4())))
            .collect();
        assert!(index.apply(&ops).await.iter().all(Result::is_ok));
    }
    for _ in 0..PATIENTS / 5_000 {
        let ops: Vec<IndexOp> = (0..5_000)
            .map(|_| {
                IndexOp::Patient(PatientEntry {
                    id: Uuid::new_v4(),
                    version: 1,
                    first_name: rng.pick(FIRST_NAMES).into(),
                    middle_name: None,
                    last_name: rng.pick(LAST_NAMES).into(),
                    birth_date: NaiveDate::from_ymd_opt(1980, 1, 1).unwrap(),
                })
            })
            .collect();
        assert!(index.apply(&ops).await.iter().all(Result::is_ok));
    }
    println!(
        "index holds {} entries ({} documents, {} patients)",
        embedded.entries(),
        TOTAL_DOCS,
        PATIENTS
    );

    let query = |text: String, kind: Kind| SearchQuery {
        text,
        kind,
        limit: 20,
        offset: 0,
        patient_id: None,
        author_id: None,
        doc_type: None,
        from: None,
        to: None,
    };
    for (label, kind) in [
        ("documents, two words", Kind::Document),
        ("patients, a misspelt name", Kind::Patient),
    ] {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        let mut hits = 0u64;
        for _ in 0..QUERIES {
            let text = match kind {
                Kind::Document => format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
                Kind::Patient => {
                    // One letter replaced: the fuzzy match has to find it.
                    let name: Vec<char> = rng.pick(LAST_NAMES).chars().collect();
                    let at = 1 + (rng.next() as usize) % (name.len() - 1);
                    let mut typo = name.clone();
                    typo[at] = 'о';
                    typo.into_iter().collect()
                }
            };
            let request = query(text, kind);
            let started = Instant::now();
            let results = index.search(&request).await.unwrap();
            histogram
                .record(started.elapsed().as_micros() as u64)
                .unwrap();
            hits += results.total.min(1);
        }
        println!(
            "(b) search latency, {label}, over {TOTAL_DOCS} documents and {PATIENTS} patients: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} of {QUERIES} queries found something; \
             target p99 < 50 ms: {:.1}× under)",
            percentile(&histogram, 0.5),
            percentile(&histogram, 0.99),
            histogram.max() as f64 / 1000.0,
            hits,
            50.0 / percentile(&histogram, 0.99),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    app.shutdown().await;
}
