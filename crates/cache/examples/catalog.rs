//! A product catalog on Tiercache: a service with a schema of its own, against real Redis.
//!
//! Products are read by id and by SKU; a category's listing is paged, and a product's
//! change invalidates its keys and every cached page of its category (a tag). A product
//! page's data (the product by SKU, then its reviews) comes in one batched read.
//!
//! Run with Redis on 127.0.0.1:6379 (or `REDIS_URL`):
//! `cargo run -p tiercache --example catalog`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiercache::{
    CacheConfig, Digest, EntityPolicy, Identified, Invalidation, InvalidationSource, KeyDef,
    NoopObserver, Plan, Schema, Slot, TagDef, TwoTierCache,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    // First, so a batched read can follow a product to its other keys.
    id: i64,
    sku: String,
    category_id: i64,
    name: String,
    price_cents: u64,
}

impl Identified for Product {
    fn id(&self) -> i64 {
        self.id
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Listing {
    product_ids: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reviews {
    count: u32,
    stars: f32,
}

/// The catalog's schema: what the engine knows of this service.
struct Catalog {
    schema: Schema,
    product_by_id: KeyDef<i64>,
    product_by_sku: KeyDef<Digest>,
    listing_page: KeyDef<(i64, u32)>,
    reviews_of: KeyDef<i64>,
    category: TagDef<i64>,
}

fn declare() -> Result<Catalog, tiercache::SchemaError> {
    let mut b = Schema::builder();
    let product = b.entity(
        "product",
        EntityPolicy::with_l2_ttl(Duration::from_secs(900)),
    );
    let listing = b.entity(
        "listing",
        EntityPolicy::with_l2_ttl(Duration::from_secs(300)),
    );
    let reviews = b.entity(
        "reviews",
        EntityPolicy::with_l2_ttl(Duration::from_secs(600)),
    );
    let product_by_id = b.key(product, "product:id:{}");
    let product_by_sku = b.key(product, "product:sku:{}");
    let listing_page = b.key(listing, "listing:{}:{}");
    let reviews_of = b.key(reviews, "reviews:{}");
    // A batched read goes from a SKU to the product's id.
    b.followable(product_by_sku);
    // A category's pages, whatever their number, go with any of its products' changes.
    let category = b.tag("category");
    b.tagged(listing_page, category);
    Ok(Catalog {
        schema: b.build()?,
        product_by_id,
        product_by_sku,
        listing_page,
        reviews_of,
        category,
    })
}

/// The source of truth, counting its reads.
#[derive(Default)]
struct Database {
    products: Mutex<HashMap<i64, Product>>,
    reads: AtomicUsize,
}

impl Database {
    fn product(&self, id: i64) -> Option<Product> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.lock().get(&id).cloned()
    }

    fn by_sku(&self, sku: &str) -> Option<Product> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.lock().values().find(|p| p.sku == sku).cloned()
    }

    fn listing(&self, category_id: i64, page: u32) -> Listing {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut ids: Vec<i64> = self
            .lock()
            .values()
            .filter(|p| p.category_id == category_id)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        let start = (page as usize * 10).min(ids.len());
        Listing {
            product_ids: ids[start..].iter().take(10).copied().collect(),
        }
    }

    fn set_price(&self, id: i64, price_cents: u64) -> Option<Product> {
        let mut products = self.lock();
        let product = products.get_mut(&id)?;
        product.price_cents = price_cents;
        Some(product.clone())
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Product>> {
        self.products
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let catalog = declare()?;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let config = CacheConfig::builder()
        .schema(catalog.schema.clone())
        .prefix("catalog")
        .env(format!("example{}", std::process::id()))
        .key_secret(b"catalog-example-secret-0123456789".to_vec())
        .redis_url(Some(redis))
        .build()?;
    let cache = TwoTierCache::new(config, NoopObserver)?;
    let db = Arc::new(Database::default());
    for id in 1..=12 {
        let product = Product {
            id,
            sku: format!("SKU-{id:04}"),
            category_id: if id % 2 == 0 { 2 } else { 3 },
            name: format!("Product {id}"),
            price_cents: 1_000 + id.unsigned_abs() * 10,
        };
        db.lock().insert(id, product);
    }

    // Read through: the first read loads, the second is an L1 hit.
    let key = catalog.product_by_id.key(7);
    let load = |db: Arc<Database>| move || async move { Ok::<_, std::io::Error>(db.product(7)) };
    let first = cache.get_or_load(key, load(Arc::clone(&db))).await?;
    let again = cache.get_or_load(key, load(Arc::clone(&db))).await?;
    assert_eq!(first, again);
    assert_eq!(db.reads(), 1, "the second read is served from L1");
    println!(
        "product 7 by id: {:?}; database reads: {}",
        first.map(|p| p.price_cents),
        db.reads()
    );

    // A category's listing pages, cached as they are read.
    for page in 0..2 {
        let db = Arc::clone(&db);
        let listing = cache
            .get_or_load(catalog.listing_page.key((3, page)), move || async move {
                Ok::<_, std::io::Error>(Some(db.listing(3, page)))
            })
            .await?;
        println!(
            "category 3, page {page}: {:?}",
            listing.map(|l| l.product_ids.clone())
        );
    }
    let reads_before_write = db.reads();

    // A write: the product's keys and its category's pages go from both tiers, on every
    // instance; the next reads load the new price.
    let product = db.set_price(7, 999).ok_or("product 7 is gone")?;
    let invalidation = Invalidation::new(catalog.product_by_id.entity())
        .with_key(catalog.product_by_id.key(7))
        .with_key(
            catalog
                .product_by_sku
                .key(cache.keys().digest(&product.sku)),
        )
        .with_tag(catalog.category.of(product.category_id));
    let report = cache
        .invalidate(invalidation, InvalidationSource::Write)
        .await;
    println!(
        "invalidated {} keys (Redis: {:?})",
        report.keys, report.l2_failure
    );
    let fresh = cache.get_or_load(key, load(Arc::clone(&db))).await?;
    assert_eq!(fresh.as_ref().map(|p| p.price_cents), Some(999));
    let db_page = Arc::clone(&db);
    cache
        .get_or_load(catalog.listing_page.key((3, 1)), move || async move {
            Ok::<_, std::io::Error>(Some(db_page.listing(3, 1)))
        })
        .await?;
    assert_eq!(
        db.reads(),
        reads_before_write + 2,
        "the product and the page loaded again"
    );

    // A product page in one batched read: the product by SKU, then its reviews by the id
    // read from it, in at most one Redis round trip for whatever L1 lacks.
    let sku = "SKU-0004";
    let plan = || {
        let mut plan = Plan::new();
        let product = plan.key::<Product>(catalog.product_by_sku.key(cache.keys().digest(sku)));
        let reviews = plan.follow::<_, Reviews, _>(product, catalog.reviews_of, |id| id);
        (plan, product, reviews)
    };
    let (p, product_step, _) = plan();
    let batch = cache.read(p).await;
    if let Slot::Missing = batch.get(product_step) {
        let found = db.by_sku(sku);
        let id = found.as_ref().map(|p| p.id);
        cache
            .install(
                &batch,
                catalog.product_by_sku.key(cache.keys().digest(sku)),
                found,
            )
            .await?;
        if let Some(id) = id {
            let reviews = Reviews {
                count: 3,
                stars: 4.5,
            };
            cache
                .install(&batch, catalog.reviews_of.key(id), Some(reviews))
                .await?;
        }
    }
    let (p, product_step, reviews_step) = plan();
    let batch = cache.read(p).await;
    assert!(batch.is_complete(), "the second read finds both in L1");
    match (batch.get(product_step), batch.get(reviews_step)) {
        (Slot::Found(product), Slot::Found(reviews)) => {
            println!(
                "{} ({}): {} reviews, {} stars",
                product.name, product.sku, reviews.count, reviews.stars
            );
        }
        other => return Err(format!("expected both cached, got {other:?}").into()),
    }

    // Sweep the cached keys from the shared Redis (the bus stream expires a day after its
    // last message).
    cache.flush_l2_writes().await;
    if let Some(sweep) = cache.invalidate_all(InvalidationSource::Admin) {
        sweep.await??;
    }
    println!("done: {} database reads in all", db.reads());
    Ok(())
}
